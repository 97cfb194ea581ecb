"""natv2: Neural Architecture Transfer 2 as a Snakemake workflow.

    snakemake --cores 2 results/digits/pareto.csv           # the embedded default, on a CPU
    snakemake --cores 8 results/cifar10/pareto.csv --configfile my.yaml
    snakemake --profile profiles/slurm results/cifar10/pareto.csv

Every rule calls one `natv2 <step>` command; the phases are in workflow/rules/*.smk and the
config schema in workflow/schemas/config.schema.yaml.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"

# `snakemake --lint` (run by .ci/run) is clean but for one warning on every rule, "Specify a
# conda environment or container for each rule": every rule runs the `natv2` CLI of the one
# environment the workflow runs in (requirements.txt pins it; the README installs it), so a
# per-rule env would repeat that pin, and `software-env` being a rerun trigger
# (profiles/default), adding one would rerun every finished result.


include: "workflow/rules/common.smk"


wildcard_constraints:
    ds="[A-Za-z0-9_.-]+",
    i="[0-9]+",
    k="[0-9]+",
    id="[A-Za-z0-9_-]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/supernet.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/post.smk"


rule all:
    input:
        all_targets(),
    default_target: True
