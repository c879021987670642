"""cli: the commands users run. run_study.py, train_one.py, analyze_hyperparameter_results.py,
predict.py and models.py are their front-ends, and so are the console commands of an installed
package (pyproject.toml [project.scripts]). Each module has `main(argv=None) -> int` and runs with `python -m` too; args
holds what they share about flags and output.

May import: every layer. Standard library only at import (a login node runs `--help`, submit and
status): a command imports what needs numpy or TensorFlow after parsing its flags."""
