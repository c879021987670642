"""What the command-line scripts share about their flags: the parser whose errors are one line, and
the positive-number flag types. Standard library only (run_study.py runs on login nodes)."""
import argparse


class OneLineParser(argparse.ArgumentParser):
    """Bad flags -> ONE line naming the flag (argparse's default prints the usage block first), exit 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value
