"""`DataError`, the one exception type of bad input, and the one-line forms of error messages.

Its message is one line naming the file (or folder) and the problem, because these messages end up
in scheduler logs, where a traceback from deep inside tifffile tells a user nothing. Raised by
mitoseg.data.stacks, scaling, patches, synthetic and cell_data.
"""


class DataError(ValueError):
    """Bad input. str(err) is ONE line naming the file and the problem, e.g.
    "training_groundtruth.tif: mask values {0, 3, 255} are not {0, 255} or {0, 1}"."""


def one_line(text, limit=200) -> str:
    """Collapse a (library) message to one short line, so DataError stays one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(err: BaseException) -> str:
    """The first line of an exception's message ("" for none): what one-line error reports quote."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def error_line(err: BaseException, limit: int = 300) -> str:
    """THE one-line form of an exception: "<kind>: <first line of its message>" (the kind alone for an empty
    message), cut to `limit` characters; results JSONs, the pre-flight rows and the report's reasons quote it."""
    text = first_line(err)
    return (f"{type(err).__name__}: {text}" if text else type(err).__name__)[:limit]


def data_error(where, problem) -> DataError:
    """The DataError "<where>: <problem>" (one line)."""
    return DataError(one_line(f"{where}: {problem}", limit=400))
