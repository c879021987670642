#!/bin/bash
# The hyperparameter study: one grid cell per array element; the analysis runs afterwards as a
# dependent job (afterany), submitted by the first element that starts.
#   PBS Pro:  qsub pbs_hyperparameter_optimization.sh        (from the repository folder)
#   Torque:   qsub -t 0-35 pbs_hyperparameter_optimization.sh (if it rejects the -J line, delete it)
#   A grid of another size: python run_study.py submit --grid-config G.json (sets the range itself)
# The -J range must be 0..(grid size - 1): `python run_study.py list --size`; checked by
# pbs_setup_verification.sh. All logic is in run_study.py and mitoseg/ (runner.py: the element).
# Environment (exported with -V): TF_CONTAINER=image (e.g. /apps/containers/tensorflow_2.16.1-cuda_12.5.0_24.06.sif,
# a sandbox folder or docker://...; else the site profile's; none: the host python; unusable: the element
# fails, exit 2), MITOSEG_SITE (site profile), STUDY_DIR (default: a new
# hyperparameter_optimization_<timestamp>/ shared by all elements), GRID_CONFIG, DATA_DIR, PYTHON.
# Inside the container the code, study and data folders are bound (--bind) by the launcher.
# Walltime: 2 h per cell, about 10x the estimated A40 cell (10-12 min at the cluster default, see
# Hyperparameter_Optimization_Strategy.md); `bash pbs_setup_verification.sh` on a GPU node measures
# a step and says when this is too short or far too long. A cell cut by the walltime resumes from
# its last finished epoch when resubmitted.
# K cells per element on one GPU: python run_study.py submit --cells-per-gpu K (sets CELLS_PER_GPU and the range).
#PBS -N mitoseg_hpo
#PBS -J 0-35
#PBS -l select=1:ncpus=8:ngpus=1:mem=64gb
#PBS -l walltime=02:00:00
#PBS -j oe
#PBS -V
cd "${PBS_O_WORKDIR:-$PWD}" || exit 2
exec "${PYTHON:-python3}" -m mitoseg.cli.study element
