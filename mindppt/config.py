"""mindcv-style configuration: YAML recipes as argparse defaults, the command line overriding them, and one
parser per tool assembled from shared option groups.

Precedence, lowest to highest: the option defaults below < the YAML file given by ``-c/--config`` <
``--key value`` on the command line. A recipe is a flat mapping whose keys are option names
(``batch_size: 128``); every value goes through the option's type function, so ``lr: 6e-5`` (a string to
PyYAML) and ``--lr 6e-5`` both become the float 6e-05.

Names and meanings are mindcv's (its ``config.py`` and ``configs/``) wherever the concept is shared;
options mindcv does not have are PPT's (``r_tokens``, ``pp_loc_list``, ``threshold``, ...) or DeiT's
(``lr_per_512``, ``mixup_switch_prob``, the distillation options). A recipe is shared by every tool: a key
that belongs to another tool is simply not read; a mindcv key that cannot change anything here
(``dataset_sink_mode`` ...) is accepted and reported once by the tool that would have read it
(:func:`unused_options`); a key no tool and not mindcv knows is an error with close matches.

Value syntax (command line and YAML alike): booleans ``true/false/1/0/yes/no/on/off``, and ``--ema`` alone
means true; lists as a YAML list or one comma-separated token (``--pp_loc_list 3,6,9``); ``r_tokens`` an
int or one per block; ``threshold`` / ``eval_threshold`` a float or one per compression block;
``none`` / ``null`` unsets an optional value. ``mean`` / ``std`` are in pixel units (0-255), as mindcv's.

User errors raise :class:`~mindppt.errors.ConfigError` (a one-line message naming the file, key, value
and what was expected); a flag another tool takes carries a ``hint`` naming that tool.
"""
import argparse
import difflib
import os
import shutil
import sys
from dataclasses import dataclass

import yaml

from mindppt.errors import ConfigError
from mindppt.io import atomic_write
from mindppt.option_types import (
    choice,
    float_or_list,
    float_type,
    int_or_list,
    int_type,
    list_of,
    optional,
    str2bool,
    str_type,
)

__all__ = ["Option", "TOOLS", "ALL_OPTIONS", "build_parser", "tool_parser", "add_options", "parse_args",
           "load_config", "validate_config", "save_config", "default_config", "tool_options", "tools_reading",
           "unused_options", "options_table", "str2bool"]


@dataclass(frozen=True)
class Option:
    """One configuration key: its type function, default, help, and whether mindcv has it (same name and
    meaning) or it is mindppt's own."""
    name: str
    type: object
    default: object
    help: str
    mindcv: bool = True


def _re_value(value):
    """mindcv's ``re_value`` (MindSpore's RandomErasing value): an int, three ints (per channel) or 'random'
    (per-pixel noise)."""
    if isinstance(value, str) and value.strip().lower() == "random":
        return "random"
    try:
        return int_type()(value)
    except argparse.ArgumentTypeError:
        pass
    try:
        return list_of(int_type(), length=3)(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'random', an int or three ints, got {value!r}") from None


_O = Option
_PROB = float_type(0.0, 1.0)
_POSITIVE = float_type(lo=0.0, lo_open=True)
_RANGE = list_of(_POSITIVE, length=2)
_AMP = choice("O0", "O1", "O2", "O3")

# ---- option groups (the sections of --help) ----------------------------------------------------------
GROUPS = {
    "device": (
        _O("device_target", choice("CPU", "GPU", "Ascend", "auto"), "CPU",
           "CPU, GPU, Ascend, or auto (Ascend, else GPU, else CPU)"),
        _O("device_id", int_type(lo=0), 0, "device index on one device", mindcv=False),
        _O("mode", choice("graph", "pynative", aliases={0: "graph", 1: "pynative"}), "graph",
           "0 / graph (GRAPH_MODE) or 1 / pynative"),
        _O("jit_level", optional(choice("O0", "O1", "O2")), None,
           "graph compile level; none = MindSpore's default", mindcv=False),
    ),
    "system": (
        _O("distribute", str2bool, False, "data parallel over the devices msrun launched"),
        _O("seed", int_type(lo=0), 42, "random seed"),
    ),
    "model": (
        _O("model", str_type, "ppt_deit_small_patch16_224", "registered model name"),
        _O("num_classes", int_type(lo=1), 1000, "number of classes"),
        _O("in_channels", int_type(lo=1), 3, "input channels"),
        _O("pretrained", str2bool, False, "published weights by name (none can be downloaded: use ckpt_path)"),
        _O("ckpt_path", optional(str_type), None, "weights: any format the weight loader reads"),
        _O("ema", str2bool, False, "use the EMA weights of a tools/train.py checkpoint"),
        _O("r_tokens", optional(int_or_list(lo=0)), None,
           "tokens removed per compression block (int or one per block; 0 = dense); none = model's",
           mindcv=False),
        _O("pp_loc_list", optional(list_of(int_type(lo=0), unique=True)), None,
           "0-indexed compression blocks, e.g. 3,6,9; none = model's", mindcv=False),
        _O("eval_threshold", optional(float_or_list(lo=0.0)), None,
           "policy threshold on the score variance (below: pool, else prune), float or one per block; "
           "none = threshold", mindcv=False),
        _O("prop_attn", optional(str2bool), None, "proportional attention; none = model's", mindcv=False),
    ),
    "data": (
        _O("dataset", choice("imagenet", "imagefolder"), "imagenet",
           "dataset type: an ImageFolder tree (class folders under each split)"),
        _O("data_dir", str_type, "data/imagenet", "dataset root holding the split folders"),
        _O("val_split", str_type, "val", "validation split folder"),
        _O("batch_size", int_type(lo=1), 128, "batch size per device"),
        _O("num_parallel_workers", int_type(lo=1), 4, "data-loading workers per device"),
    ),
    "preprocessing": (
        _O("image_resize", optional(int_type(lo=1)), None, "input size (train crop, eval crop); none = model's"),
        _O("interpolation", optional(choice("bilinear", "bicubic", "nearest")), None,
           "resize interpolation; none = model's"),
        _O("crop_pct", optional(float_type(lo=0.0, hi=1.0, lo_open=True)), None,
           "eval: resize to image_resize / crop_pct, centre-crop; none = model's"),
        _O("mean", optional(list_of(float_type(), length=3)), None, "normalisation mean, 0-255; none = model's"),
        _O("std", optional(list_of(_POSITIVE, length=3)), None, "normalisation std, 0-255; none = model's"),
    ),
    "evaluation": (
        _O("val_amp_level", _AMP, "O0", "mixed precision of evaluation"),
        _O("log_interval", int_type(lo=1), 100, "log every N steps / batches"),
    ),
    "training": (
        _O("train_split", str_type, "train", "training split folder"),
        _O("shuffle", str2bool, True, "shuffle the training set"),
        _O("drop_remainder", str2bool, True, "drop the last partial training batch"),
        _O("threshold", optional(float_or_list(lo=0.0)), None,
           "policy threshold while training (float or one per block); none = model's", mindcv=False),
        _O("drop_rate", _PROB, 0.0, "dropout rate"),
        _O("drop_path_rate", _PROB, 0.1, "stochastic depth rate"),
        _O("ema_decay", _PROB, 0.99996, "EMA decay per step (with ema)"),
        _O("loss", choice("CE"), "CE", "loss: CE (soft-target cross entropy)"),
        _O("label_smoothing", _PROB, 0.1, "label smoothing"),
    ),
    "augmentation": (
        _O("scale", _RANGE, [0.08, 1.0], "RandomResizedCrop area range"),
        _O("ratio", _RANGE, [0.75, 1.3333333333333333], "RandomResizedCrop aspect range"),
        _O("hflip", _PROB, 0.5, "horizontal flip probability"),
        _O("vflip", _PROB, 0.0, "vertical flip probability"),
        _O("auto_augment", optional(str_type), "rand-m9-mstd0.5-inc1", "RandAugment policy; none = off"),
        _O("color_jitter", optional(float_type(lo=0.0)), 0.4, "colour jitter (not with auto_augment)"),
        _O("re_prob", _PROB, 0.25, "random erasing probability"),
        _O("re_scale", _RANGE, [0.02, 0.3333333333333333], "random erasing area range"),
        _O("re_ratio", _RANGE, [0.3, 3.3], "random erasing aspect range"),
        _O("re_value", _re_value, "random", "erased pixels: random (noise), an int or three"),
        _O("re_max_attempts", int_type(lo=1), 10, "random erasing attempts"),
        _O("mixup", float_type(lo=0.0), 0.8, "mixup alpha (0 = off)"),
        _O("cutmix", float_type(lo=0.0), 1.0, "cutmix alpha (0 = off)"),
        _O("cutmix_prob", _PROB, 1.0, "probability of mixup or cutmix per batch"),
        _O("mixup_switch_prob", _PROB, 0.5, "cutmix instead of mixup when both are on", mindcv=False),
        _O("aug_repeats", int_type(lo=0), 0, "repeated augmentation: repeats per image (0 = off; DeiT 3)"),
    ),
    "optimisation": (
        _O("opt", choice("adamw", "sgd", "momentum"), "adamw", "optimizer"),
        _O("lr", optional(float_type(lo=0.0)), None, "peak learning rate (absolute); wins over lr_per_512"),
        _O("lr_per_512", optional(float_type(lo=0.0)), 5e-4,
           "peak lr per 512 images of the global batch (DeiT rule)", mindcv=False),
        _O("weight_decay", float_type(lo=0.0), 0.05, "weight decay"),
        _O("weight_decay_filter", choice("disable", "auto", "norm_and_bias"), "norm_and_bias",
           "no decay for: nothing / norms / norms, biases and the model's tokens"),
        _O("momentum", _PROB, 0.9, "momentum (sgd, momentum)"),
        _O("use_nesterov", str2bool, False, "Nesterov momentum (sgd, momentum)"),
        _O("betas", list_of(_PROB, length=2), [0.9, 0.999], "AdamW betas", mindcv=False),
        _O("eps", _POSITIVE, 1e-8, "AdamW epsilon"),
        _O("scheduler", choice("cosine_decay", "constant"), "cosine_decay", "lr schedule after warmup"),
        _O("epoch_size", int_type(lo=1), 300, "training epochs"),
        _O("warmup_epochs", float_type(lo=0.0), 5.0, "linear warmup epochs (may be fractional)"),
        _O("warmup_factor", float_type(lo=0.0), 0.002, "warmup starts at lr * warmup_factor (DeiT: 1e-6 / 5e-4)"),
        _O("decay_epochs", optional(float_type(lo=0.0, lo_open=True)), None,
           "cosine_decay: epochs from lr to min_lr; none = the rest after warmup"),
        _O("min_lr", float_type(lo=0.0), 1e-5, "final lr of cosine_decay"),
        _O("lr_epoch_stair", str2bool, False, "one lr per epoch instead of per step"),
        _O("amp_level", _AMP, "O0", "mixed precision of training"),
        _O("loss_scale_type", choice("fixed", "dynamic", "none"), "none", "loss scaling"),
        _O("loss_scale", _POSITIVE, 1024.0, "fixed scale, or the first dynamic one"),
        _O("drop_overflow_update", str2bool, False, "fixed scaling: skip a step whose gradients overflow"),
        _O("clip_grad", str2bool, False, "clip gradients by global norm"),
        _O("clip_value", _POSITIVE, 15.0, "global-norm bound of clip_grad"),
    ),
    "checkpointing": (
        _O("ckpt_save_dir", str_type, "outputs/run", "run directory: checkpoints, train.log, config.yaml"),
        _O("ckpt_save_interval", int_type(lo=1), 1, "save a checkpoint every N epochs"),
        _O("keep_checkpoint_max", int_type(lo=0), 5, "epoch checkpoints kept (0 = all)"),
        _O("ckpt_save_policy", choice("latest_k", "top_k"), "latest_k",
           "keep the newest, or the best-validated, keep_checkpoint_max"),
        _O("resume_opt", str2bool, False, "ckpt_path is a training checkpoint: resume optimizer, lr, epoch"),
        _O("val_while_train", str2bool, True, "validate during training"),
        _O("val_interval", int_type(lo=1), 1, "validate every N epochs"),
    ),
    "distillation": (
        _O("distillation_type", choice("none", "hard"), "none", "DeiT's hard distillation, or none",
           mindcv=False),
        _O("teacher_model", optional(str_type), None, "registered name of the teacher", mindcv=False),
        _O("teacher_checkpoint", optional(str_type), None, "the teacher's weights", mindcv=False),
        _O("distillation_alpha", _PROB, 0.5, "weight of the distillation loss", mindcv=False),
    ),
    "output": (
        _O("metrics_out", optional(str_type), None, "write the metrics to this JSON file", mindcv=False),
    ),
}

# mindcv keys with no counterpart here. Values that change nothing are accepted and reported by the tool
# that would read them; a value that asks for something mindppt does not do is an error.
_MINDCV_UNUSED = {
    # key: (type, values that change nothing (None: any), why it changes nothing)
    "dataset_download": (str2bool, None, "the data is read from ImageFolder directories, nothing is downloaded"),
    "dataset_sink_mode": (str2bool, None, "the training loop feeds every step from the host (no dataset sink)"),
    "eval_shuffle": (str2bool, None, "evaluation metrics do not depend on the order of the images"),
    "num_samples": (optional(int_type(lo=1)), (None,), "subsampling a split is not implemented; "
                                                      "point data_dir at a smaller ImageFolder"),
    "aug_splits": (int_type(lo=0), (0,), "AugMix splits are not implemented"),
    "aux_factor": (float_type(lo=0.0), (0.0,), "no model here has an auxiliary-logits loss"),
    "reduction": (choice("mean", "sum", "none"), ("mean",), "the loss is always the batch mean"),
    "amp_cast_list": (optional(str_type), (None,), "per-cell cast lists are not supported; amp_level applies"),
    "layer_decay": (optional(float_type(lo=0.0)), (None,), "layer-wise lr decay is not implemented"),
    "gradient_accumulation_steps": (int_type(lo=1), (1,), "gradient accumulation is not implemented"),
    "num_cycles": (int_type(lo=1), (1,), "cosine_decay here is one cycle"),
    "cycle_decay": (float_type(lo=0.0), (1.0,), "cosine_decay here is one cycle"),
    "decay_rate": (float_type(lo=0.0), None, "it applies to the step and exponential schedulers, which "
                                             "mindppt does not offer"),
    "multi_step_decay_milestones": (list_of(int_type(lo=0)), None, "it applies to multi_step_decay, which "
                                                                  "mindppt does not offer"),
}

# ---- the tools ---------------------------------------------------------------------------------------
_TRAIN_GROUPS = ("device", "system", "model", "data", "preprocessing", "training", "augmentation", "optimisation",
                 "checkpointing", "evaluation", "distillation")
_INFER = ("device", "model", "data", "preprocessing", "evaluation")
# tool: (groups it reads, options of those groups it takes from the recipe only, not the command line).
# The sweep and the tuner set r, blocks and thresholds per setting (the recipe's are the sweep's defaults
# and the tuner's first blocks); the demo trains a dense and a PPT digits ViT of its recipe into its own
# folders.
TOOLS = {
    "train": (_TRAIN_GROUPS, ()),
    "eval": (_INFER + ("output",), ()),
    "analyze": (_INFER, ()),
    "sweep": (_INFER, ("r_tokens", "pp_loc_list", "eval_threshold")),
    "tune": (_INFER, ("r_tokens", "pp_loc_list", "eval_threshold")),
    "export": (_INFER, ("val_split", "num_parallel_workers", "log_interval")),
    "predict": (_INFER, ("val_split", "num_parallel_workers", "log_interval")),
    "demo": (_TRAIN_GROUPS, ("distribute", "data_dir", "ckpt_save_dir", "resume_opt", "distillation_type",
                             "teacher_model", "teacher_checkpoint", "distillation_alpha")
             + tuple(o.name for o in GROUPS["model"])),
}
# the tool's own flag that replaces a recipe-only option on its command line
_INSTEAD = {"sweep": {"r_tokens": "--r", "eval_threshold": "--thresholds"},
            "tune": {"pp_loc_list": "--blocks", "r_tokens": "a target (--target_gmacs, --target_ratio, ...)",
                     "eval_threshold": "a target (--target_gmacs, --target_ratio, ...)"}}
# options of a tool's own group (--out ...) are added by the tool; export and predict read the class
# names from data_dir/train_split
_EXTRA = {"export": ("train_split",), "predict": ("train_split",), "tune": ("seed",)}  # tune: the seed of its split

ALL_OPTIONS = {o.name: o for group in GROUPS.values() for o in group}


def tool_options(tool, command_line=True):
    """Names of the configuration options ``tool`` reads (``command_line``: only those it takes on the
    command line, else also those it takes from the recipe only), in --help order."""
    groups, recipe_only = TOOLS[tool]
    names = [o.name for g in groups for o in GROUPS[g] if not command_line or o.name not in recipe_only]
    return names + [n for n in _EXTRA.get(tool, ()) if n not in names]


def tools_reading(name):
    """The tools whose parser has option ``name``."""
    return [tool for tool in TOOLS if name in tool_options(tool)]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One line per option where the terminal allows: a short metavar, the default in brackets when set."""

    def __init__(self, prog):
        width = min(120, max(100, shutil.get_terminal_size().columns))  # a one-screen --help, also in a pipe
        super().__init__(prog, max_help_position=38, width=width)

    def _get_help_string(self, action):
        default = action.default
        if default in (None, "", argparse.SUPPRESS) or not action.option_strings or action.dest == "help":
            return action.help
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{action.help} [{shown}]"


class _Parser(argparse.ArgumentParser):
    """Raises ConfigError instead of printing the usage and exiting (the tools print one line)."""

    def error(self, message):
        raise ConfigError(message)


def _metavar(option):
    choices = getattr(option.type, "choices", None)
    if choices and len(",".join(choices)) <= 24:
        return "{" + ",".join(choices) + "}"
    return option.name.rsplit("_", 1)[-1].upper()


def _add(group, option):
    kwargs = dict(type=option.type, default=option.default, help=option.help, metavar=_metavar(option))
    if option.type is str2bool:
        kwargs.update(nargs="?", const=True, metavar="BOOL")
    group.add_argument(f"--{option.name}", **kwargs)


def tool_parser(prog, description=None, usage=None):
    """An empty parser for a tool with its own options (raises ConfigError on a usage error); shared
    options go in with :func:`add_options`."""
    return _Parser(prog=prog, description=description, formatter_class=_HelpFormatter, allow_abbrev=False,
                   usage=usage)


def add_options(group, names, defaults=None):
    """Add the shared options ``names`` (their types, help and, unless ``defaults`` says otherwise,
    defaults) to an argparse group of a tool's own parser."""
    for name in names:
        option = ALL_OPTIONS[name]
        if defaults and name in defaults:
            option = Option(option.name, option.type, defaults[name], option.help, option.mindcv)
        _add(group, option)


def build_parser(tool="train", description=None, add_tool_options=None):
    """The parser of ``tool`` (a key of :data:`TOOLS`): -c/--config, the tool's own options
    (``add_tool_options(group)``) and the configuration options it reads, in mindcv-like groups."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}; expected one of {', '.join(TOOLS)}")
    prog = f"tools/{tool}.py"
    parser = tool_parser(prog, description, usage=f"{prog} [-h] [-c CONFIG] [--option VALUE ...]")
    parser.add_argument("-c", "--config", type=str, default=None, help="YAML recipe (option: value) as defaults")
    if add_tool_options is not None:
        add_tool_options(parser.add_argument_group(f"{tool}"))
    wanted = set(tool_options(tool))
    groups, _ = TOOLS[tool]
    for name in groups + tuple(g for g in GROUPS if g not in groups):
        options = [o for o in GROUPS[name] if o.name in wanted]
        if options:
            group = parser.add_argument_group(name)
            for option in options:
                _add(group, option)
    return parser


def _config_actions(parser):
    """{dest: action} of the configuration options of ``parser`` (not -c, -h or the tool's own)."""
    return {a.dest: a for a in parser._actions  # pylint: disable=protected-access
            if a.option_strings and a.dest in ALL_OPTIONS}


def default_config(tool="train"):
    """The option defaults of ``tool`` as a dict (no YAML, no command line)."""
    return {name: ALL_OPTIONS[name].default for name in tool_options(tool, command_line=False)}


# ---- YAML --------------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path):
    """Read a YAML recipe into a dict (raw values, not yet validated). Raises ConfigError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"config path is not a file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and cmark is not None and cmark is not mark:
            # e.g. an unclosed '[': the problem is at the end of the file, the cause where it opened
            problem = f"{problem} ({context} at line {cmark.line + 1}, column {cmark.column + 1})"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if data is None:  # empty or comments only
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of option: value, got a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: option names must be strings, got {', '.join(map(repr, bad))}")
    return data


def _convert(key, value, source):
    type_fn = ALL_OPTIONS[key].type if key in ALL_OPTIONS else _MINDCV_UNUSED[key][0]
    try:
        return type_fn(value)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"{source}: invalid value for option '{key}': {err}") from None


def validate_config(cfg, source="<config>"):
    """Check every key (an option of some tool, or a mindcv key) and convert its value with the option's
    type function. Returns a new dict. Raises ConfigError naming ``source``, the key, the value and the
    expected type; an unknown key gets close matches."""
    known = list(ALL_OPTIONS) + list(_MINDCV_UNUSED)
    problems = []
    for key in cfg:
        if key == "config":
            problems.append("'config' cannot be set inside a config file")
        elif key not in ALL_OPTIONS and key not in _MINDCV_UNUSED:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" (did you mean: {', '.join(close)}?)" if close else " (neither mindppt nor mindcv has it)"
            problems.append(f"unknown option {key!r}{hint}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return {key: _convert(key, value, source) for key, value in cfg.items()}


# ---- derived values and cross-option checks ----------------------------------------------------------
def _check(args, tool):
    """Cross-option checks of the options ``tool`` reads. Raises ConfigError."""
    has = vars(args)
    if tool in ("train", "demo"):
        if args.lr is None and args.lr_per_512 is None:
            raise ConfigError("set one of lr (absolute) or lr_per_512 (scaled by the global batch)")
        if args.warmup_epochs > args.epoch_size:
            raise ConfigError(f"warmup_epochs ({args.warmup_epochs:g}) exceeds epoch_size ({args.epoch_size})")
        if args.decay_epochs is not None and args.warmup_epochs + args.decay_epochs > args.epoch_size + 1e-9:
            raise ConfigError(f"warmup_epochs + decay_epochs ({args.warmup_epochs:g} + {args.decay_epochs:g}) "
                              f"exceeds epoch_size ({args.epoch_size})")
        if args.scale[0] > args.scale[1] or args.ratio[0] > args.ratio[1] or args.re_scale[0] > args.re_scale[1] \
                or args.re_ratio[0] > args.re_ratio[1]:
            raise ConfigError("scale, ratio, re_scale and re_ratio must be [min, max] with min <= max")
        if args.ckpt_save_policy == "top_k" and not args.val_while_train:
            raise ConfigError("ckpt_save_policy top_k ranks checkpoints by validation top-1: set val_while_train "
                              "true, or use latest_k")
    if "resume_opt" in has and args.resume_opt and not args.ckpt_path:
        raise ConfigError("resume_opt=true resumes the training checkpoint of ckpt_path: set ckpt_path")
    if "in_channels" in has and args.in_channels != 3:
        raise ConfigError(f"in_channels={args.in_channels}: the models here take RGB images (3 channels)")


def _resolve(args, given_yaml):
    """The 'same as' defaults: the evaluation threshold is the training one unless set."""
    if "eval_threshold" in vars(args) and args.eval_threshold is None:
        args.eval_threshold = given_yaml.get("threshold", getattr(args, "threshold", None))
    return args


def unused_options(given, tool):
    """``[(key, why)]`` for the mindcv keys in ``given`` (a dict of key: value from the recipe and command
    line) that ``tool`` would read in mindcv but that change nothing here. A value that asks for something
    mindppt does not do raises ConfigError."""
    out = []
    for key, value in given.items():
        if key not in _MINDCV_UNUSED:
            continue
        _, harmless, why = _MINDCV_UNUSED[key]
        if harmless is not None and value not in harmless:
            raise ConfigError(f"{key}={value!r} is not supported: {why}")
        if tool in ("train", "demo") or key in ("dataset_download", "eval_shuffle"):
            out.append((key, why))
    return out


# ---- parsing -----------------------------------------------------------------------------------------
def parse_args(argv=None, tool="train", description=None, add_tool_options=None):
    """Parse ``argv`` (default sys.argv[1:]) for ``tool``: defaults < YAML of -c/--config < command line.
    Returns an argparse.Namespace of the tool's options (and its own), plus ``config``,
    ``command_line_options`` (the configuration options given on the command line) and ``unused_options``
    (see :func:`unused_options`). Raises ConfigError; a flag that another tool reads
    carries ``hint`` naming it."""
    parser = build_parser(tool, description, add_tool_options)
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config", type=str, default=None)
    known, _ = pre.parse_known_args(argv)
    recipe = validate_config(load_config(known.config), source=known.config) if known.config else {}
    actions = _config_actions(parser)
    parser.set_defaults(**{k: v for k, v in recipe.items() if k in actions})
    args, extras = parser.parse_known_args(argv)
    if extras:
        _reject_extras(extras, parser, tool)
    for name in tool_options(tool, command_line=False):
        if name not in vars(args):
            setattr(args, name, recipe.get(name, ALL_OPTIONS[name].default))
    args.command_line_options = _given_on_command_line(argv, parser)
    given = dict(recipe)
    given.update({k: getattr(args, k) for k in args.command_line_options})
    args.unused_options = unused_options(given, tool)
    _check(args, tool)
    return _resolve(args, recipe)


def _given_on_command_line(argv, parser):
    by_flag = {flag: a.dest for a in parser._actions for flag in a.option_strings}  # pylint: disable=protected-access
    given = []
    for token in argv:
        if token == "--":
            break
        dest = by_flag.get(token.split("=", 1)[0]) if token.startswith("-") else None
        if dest and dest in ALL_OPTIONS and dest not in given:
            given.append(dest)
    return given


def _reject_extras(extras, parser, tool):
    flags = [t for t in extras if t.startswith("--")]
    if not flags:
        raise ConfigError(f"unrecognized arguments: {' '.join(extras)}")
    name = flags[0][2:].split("=", 1)[0]
    error = ConfigError(f"unrecognized arguments: {' '.join(extras)}")
    if name in _MINDCV_UNUSED:
        error.hint = f"--{name} is a mindcv option with no effect here ({_MINDCV_UNUSED[name][2]}); " \
                     "a recipe may carry it"
    elif name in tool_options(tool, command_line=False):
        instead = _INSTEAD.get(tool, {}).get(name)
        error.hint = (f"tools/{tool}.py takes {name} from its recipe only" +
                      (f"; use {instead}" if instead else "; it cannot be given on its command line"))
    elif name in ALL_OPTIONS:
        others = [f"tools/{t}.py" for t in tools_reading(name)]
        error.hint = f"--{name} is read by {', '.join(others)}, not tools/{tool}.py"
    else:
        valid = [s for a in parser._actions for s in a.option_strings]  # pylint: disable=protected-access
        close = difflib.get_close_matches(f"--{name}", valid, n=3, cutoff=0.6)
        if close:
            error.hint = f"did you mean: {', '.join(close)}?"
    raise error


def options_table():
    """The configuration reference as one markdown table (README "Configuration"): every option with its
    mindcv name, meaning and default, the tools that read it, then mindcv's keys that change nothing here."""
    rows = ["| option | mindcv name | meaning (default) | read by |", "|---|---|---|---|"]
    for group, options in GROUPS.items():
        for o in options:
            readers = [t for t in TOOLS if o.name in tool_options(t, command_line=False)]
            readers = "all" if len(readers) == len(TOOLS) else ", ".join(readers)
            default = "none" if o.default is None else _plain(o.default)
            rows.append(f"| `{o.name}` | {'`' + o.name + '`' if o.mindcv else '(mindppt)'} | {o.help} "
                        f"(`{default}`) | {readers} |")
    for key, (_, harmless, why) in _MINDCV_UNUSED.items():
        values = "any value" if harmless is None else "only " + ", ".join(f"`{_plain(v)}`" for v in harmless)
        rows.append(f"| - | `{key}` | accepted ({values}) and reported as unused: {why} | - |")
    return "\n".join(rows) + "\n"


def save_config(args, path):
    """Write the configuration as YAML (atomically) so ``-c path`` reproduces the run."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    data = {k: _plain(values[k]) for k in ALL_OPTIONS if k in values}
    header = "# merged mindppt config"
    if values.get("config"):
        header += f" (recipe: {values['config']})"
    return atomic_write(path, header + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
