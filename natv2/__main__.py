from natv2.cli import main

raise SystemExit(main())
