"""CLI steps. Each module defines ``register(subparsers)``; keep imports of heavy libraries
(torch, pymoo) inside the step's function so ``natv2 --help`` stays fast."""
