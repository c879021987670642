#!/bin/bash
# Check the setup before queueing the two-day study: packages, GPU, container image, dataset,
# disk space, array range vs grid size. Prints a PASS/WARN/FAIL table; exits non-zero on any FAIL.
#   qsub pbs_setup_verification.sh      (on a GPU node)   or   bash pbs_setup_verification.sh
# Same environment variables as pbs_hyperparameter_optimization.sh (TF_CONTAINER, MITOSEG_SITE, GRID_CONFIG,
# DATA_DIR); the site profile gives verify its container, binds and walltime. Queue/project: qsub -q .. -P ..
#PBS -N mitoseg_verify
#PBS -l select=1:ncpus=1:ngpus=1:mem=16gb
#PBS -l walltime=00:30:00
#PBS -j oe
#PBS -V
cd "${PBS_O_WORKDIR:-$(dirname "$0")}" || exit 2
exec "${PYTHON:-python3}" -m mitoseg.cli.study verify "$@"
