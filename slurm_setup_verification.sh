#!/bin/bash
# Slurm twin of pbs_setup_verification.sh: check the setup before queueing the study (packages, GPU,
# container image, dataset, disk space, walltime, array range). Prints a PASS/WARN/FAIL table; exits
# non-zero on any FAIL.
#   sbatch slurm_setup_verification.sh   (on a GPU node; arguments after the script go to verify,
#   e.g. sbatch slurm_setup_verification.sh --grid-config examples/gpu_full_study.json --site site.json)
#   or   bash slurm_setup_verification.sh
# Same environment variables as slurm_hyperparameter_optimization.sh (TF_CONTAINER, GRID_CONFIG,
# DATA_DIR, MITOSEG_SITE, PYTHON). Queue/account: sbatch --partition=.. --account=.. slurm_setup_verification.sh
#SBATCH --job-name=mitoseg_verify
#SBATCH --cpus-per-task=1
#SBATCH --mem=16G
#SBATCH --gres=gpu:1
#SBATCH --time=00:30:00
#SBATCH --output=mitoseg_verify_%j.out
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}" || exit 2
exec "${PYTHON:-python3}" -m mitoseg.cli.study verify "$@"
