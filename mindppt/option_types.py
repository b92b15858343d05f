"""Value types of the options: each takes a command-line string *or* a value loaded from YAML (int, float,
bool, list, None) and returns the converted value or raises ``argparse.ArgumentTypeError`` with a message
that names the value and the expected type. The same function converts both, so ``threshold: 6e-5`` (a
string to PyYAML) and ``--threshold 6e-5`` become the same float."""
import argparse
import math

__all__ = ["str2bool", "int_type", "float_type", "str_type", "choice", "list_of", "one_or_list", "int_or_list",
           "float_or_list", "optional", "split_list", "NONE_WORDS"]

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
NONE_WORDS = {"none", "null", "~", ""}


def _named(name):
    def deco(fn):
        fn.__name__ = name
        return fn
    return deco


def _shown(value):
    return repr(value) if isinstance(value, str) else str(value)


def str2bool(value):
    """true/false/1/0/yes/no/on/off (any case), or a YAML bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false/1/0), got {_shown(value)}")


def int_type(lo=None, hi=None):
    @_named("int")
    def conv(value):
        out = None
        if isinstance(value, int) and not isinstance(value, bool):
            out = value
        elif isinstance(value, str):
            try:
                out = int(value.strip())
            except ValueError:
                out = None
        if out is None:
            raise argparse.ArgumentTypeError(f"expected an int, got {_shown(value)}")
        _check_range(out, lo, hi, "an int")
        return out
    return conv


def float_type(lo=None, hi=None, lo_open=False):
    @_named("float")
    def conv(value):
        out = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                out = None
        if out is None or math.isnan(out):
            raise argparse.ArgumentTypeError(f"expected a float, got {_shown(value)}")
        _check_range(out, lo, hi, "a float", lo_open)
        return out
    return conv


def _check_range(value, lo, hi, kind, lo_open=False):
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        bounds = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise argparse.ArgumentTypeError(f"expected {kind} in {bounds}, got {value}")


@_named("str")
def str_type(value):
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. ``output_dir: 2024``
    raise argparse.ArgumentTypeError(f"expected a string, got {_shown(value)}")


def choice(*choices, aliases=None):
    """Case-insensitive choice returning the canonical spelling; ``aliases`` maps extra spellings."""
    table = {c.lower(): c for c in choices}
    table.update({str(k).lower(): v for k, v in (aliases or {}).items()})

    @_named("choice")
    def conv(value):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            key = str(value).strip().lower()
            if key in table:
                return table[key]
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {_shown(value)}")
    conv.choices = choices
    return conv


def split_list(value):
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [t for t in text.replace(",", " ").split()]


def list_of(elem, length=None, min_length=0, unique=False):
    """A list of ``elem``: a YAML list/scalar, or one comma-separated command-line token."""
    @_named(f"list of {elem.__name__}")
    def conv(value):
        if isinstance(value, str):
            items = split_list(value)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        else:
            raise argparse.ArgumentTypeError(f"expected a list of {elem.__name__}s, got {_shown(value)}")
        try:
            out = [elem(v) for v in items]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"in list {_shown(value)}: {err}") from None
        if length is not None and len(out) != length:
            raise argparse.ArgumentTypeError(
                f"expected a list of {length} {elem.__name__}s, got {len(out)}: {_shown(value)}")
        if len(out) < min_length:
            raise argparse.ArgumentTypeError(
                f"expected at least {min_length} {elem.__name__}s, got {_shown(value)}")
        if unique and len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"expected distinct values, got {_shown(value)}")
        return out
    return conv


def one_or_list(elem, what):
    """One ``elem`` value, or a list of them (a YAML list, a ``[...]`` or a comma-separated command-line
    token); ``what`` names the pair in messages, e.g. "int or list of ints"."""
    many = list_of(elem, min_length=1)

    @_named(what)
    def conv(value):
        if isinstance(value, (list, tuple)) or (isinstance(value, str) and (
                len(split_list(value)) > 1 or value.strip().startswith("["))):
            return many(value)
        if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return elem(value)  # its message has the range
        raise argparse.ArgumentTypeError(f"expected an {what}, got {_shown(value)}")
    return conv


def int_or_list(lo=None):
    """``r_tokens``: one int, or a list of ints (one per block)."""
    return one_or_list(int_type(lo=lo), "int or list of ints")


def float_or_list(lo=None):
    """``threshold``: one float, or a list of floats (one per compression block)."""
    return one_or_list(float_type(lo=lo), "float or list of floats")


def optional(fn):
    """``fn`` that also accepts None / 'none' / 'null' / '' (meaning: unset)."""
    @_named(f"{fn.__name__} or none")
    def conv(value):
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
            return None
        return fn(value)
    conv.choices = getattr(fn, "choices", None)
    return conv
