#!/usr/bin/env bash
# Install a single-node-capable Slurm from Debian's packages, for the tests in
# tests/test_slurm_cluster.py (see tests/slurm_cluster.py).
#
#   slurm-wlm          slurmctld, slurmd and the client commands (sbatch, ...)
#   slurm-wlm-torque   PBS/Torque wrappers (qsub, qstat, ...) and the spank_pbs
#                      plugin that exports PBS_* variables into jobs
#
# Idempotent: does nothing when everything is already installed; runs
# `apt-get update` only when the package lists are missing or the first
# install attempt fails. Quiet; exits non-zero on failure.
set -euo pipefail

need=0
for cmd in slurmctld slurmd sbatch qsub; do
    command -v "$cmd" >/dev/null 2>&1 || need=1
done
if [ "$need" = 0 ]; then
    echo "install_slurm: slurm already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(slurm-wlm slurm-wlm-torque)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

install() {
    $SUDO apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Use-Pty=0 "${pkgs[@]}" >"$log" 2>&1
}

update() {
    $SUDO apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
}

# apt-get update only if there are no package lists, or if the install fails
# with the lists we have (stale lists give 404s / unknown packages).
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    update
fi
if ! install; then
    update
    if ! install; then
        cat "$log" >&2
        echo "install_slurm: apt-get install ${pkgs[*]} failed" >&2
        exit 1
    fi
fi

for cmd in slurmctld slurmd sbatch qsub; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "install_slurm: $cmd missing after install" >&2
        exit 1
    fi
done
echo "install_slurm: installed ${pkgs[*]}"
