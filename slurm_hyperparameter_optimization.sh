#!/bin/bash
# Slurm twin of pbs_hyperparameter_optimization.sh: one grid cell per array task, then the analysis
# as a dependent job (afterany, --kill-on-invalid-dep=yes) submitted by the first task that starts.
#   sbatch slurm_hyperparameter_optimization.sh               (from the repository folder)
#   A grid of another size: python run_study.py submit --grid-config G.json (sets the range itself)
# The --array range must be 0..(grid size - 1): `python run_study.py list --size`; checked by
# `python run_study.py verify`. Environment: TF_CONTAINER (e.g. /apps/containers/tensorflow_2.16.1-cuda_12.5.0_24.06.sif),
# MITOSEG_SITE, STUDY_DIR, GRID_CONFIG, DATA_DIR, PYTHON (see the PBS script; also for the 2 h walltime's reason).
# run_study.py submit puts the output into STUDY/logs/ (the --output line below is for a plain sbatch).
# K cells per task on one GPU: python run_study.py submit --cells-per-gpu K (sets CELLS_PER_GPU and the range).
#SBATCH --job-name=mitoseg_hpo
#SBATCH --array=0-35
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --gres=gpu:1
#SBATCH --time=02:00:00
#SBATCH --output=mitoseg_hpo_%A_%a.out
#SBATCH --kill-on-invalid-dep=yes
cd "${SLURM_SUBMIT_DIR:-$PWD}" || exit 2
exec "${PYTHON:-python3}" -m mitoseg.cli.study element
