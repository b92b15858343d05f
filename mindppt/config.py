"""mindcv-style configuration: one argparse parser for every option, YAML recipes as its defaults.

Precedence, lowest to highest: the parser defaults below < the YAML file given by ``-c/--config`` <
``--key value`` on the command line. YAML files are flat mappings whose keys are exactly the option
names (``batch_size: 128``); every YAML value goes through the same type function as the command line,
so ``threshold: 6e-5`` (a string to PyYAML) and ``--threshold 6e-5`` both become the float 6e-05.

Value syntax (command line and YAML alike):

* booleans: ``true/false/1/0/yes/no/on/off`` (any case); on the command line ``--ema`` alone means true.
* lists: a YAML list, or one comma-separated token on the command line (``--pp_loc_list 3,6,9``,
  ``--scale 0.08,1.0``); ``r_tokens`` takes an int (every block in ``pp_loc_list``) or one int per block;
  ``threshold`` and ``eval_threshold`` a float (every compression block) or one float per compression block.
* optional values: ``none`` / ``null`` / an empty string (``--lr none``, ``auto_augment: null``) unset them.

Learning rate: ``lr`` is absolute and wins when set. Otherwise ``lr = lr_per_512 * global_batch / 512``
(DeiT's linear scaling rule, global_batch = batch_size * number of devices), computed by
:func:`mindppt.engine.build.resolve_lr`. ``min_lr`` and ``warmup_lr`` are absolute, never scaled (as in DeiT).

User errors (unknown keys, wrong types, unreadable YAML) exit through ``parser.error`` (status 2, a
message, no traceback). :func:`load_config` and :func:`validate_config` raise :class:`ConfigError`
instead, for programmatic use.
"""
import argparse
import difflib
import os
import sys

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

__all__ = ["EVAL_TOOLS", "build_parser", "parse_args", "load_config", "validate_config", "save_config",
           "default_config", "str2bool", "given_options", "ineffective_options"]


# ----------------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def _add(group, name, type_fn, default, help_text, metavar=None):
    choices = getattr(type_fn, "choices", None)
    if metavar is None and choices:
        metavar = "{" + ",".join(choices) + "}"
    kwargs = dict(type=type_fn, default=default, help=help_text, metavar=metavar)
    if type_fn is str2bool:
        kwargs.update(nargs="?", const=True, metavar="BOOL")
    group.add_argument(f"--{name}", **kwargs)


def build_parser():
    """Every training/evaluation option with its type, default and help, in mindcv-like groups."""
    parser = argparse.ArgumentParser(
        description="mindppt training / evaluation. Values come from the defaults below, then the YAML "
                    "file of -c/--config, then --key value on the command line.",
        formatter_class=_HelpFormatter, allow_abbrev=False)
    parser.add_argument("-c", "--config", type=str, default=None,
                        help="YAML recipe (flat mapping of option: value) used as defaults")

    g = parser.add_argument_group("system")
    _add(g, "device_target", choice("CPU", "GPU", "Ascend", "auto"), "CPU",
         "backend device; auto = Ascend, else GPU, else CPU (whichever this MindSpore can load)")
    _add(g, "device_id", int_type(lo=0), 0, "device index (single-device runs)")
    _add(g, "mode", choice("graph", "pynative", aliases={0: "graph", 1: "pynative"}), "graph",
         "execution mode (0/1 are accepted as MindSpore's GRAPH_MODE/PYNATIVE_MODE)")
    _add(g, "jit_level", optional(choice("O0", "O1", "O2")), None,
         "graph compile level (jit_config jit_level); none = MindSpore's default for the backend")
    _add(g, "distribute", str2bool, False, "data-parallel training over all launched devices (msrun/mpirun)")
    _add(g, "seed", int_type(lo=0), 42, "random seed")
    _add(g, "output_dir", str_type, "outputs/run", "directory for logs, checkpoints and the saved config")

    g = parser.add_argument_group("model")
    _add(g, "model", str_type, "ppt_deit_small_patch16_224", "registered model name")
    _add(g, "num_classes", int_type(lo=1), 1000, "number of classes")
    _add(g, "pretrained", str2bool, False,
         "load published weights by name (no download exists: convert weights and use checkpoint_path)")
    _add(g, "checkpoint_path", optional(str_type), None,
         "MindSpore checkpoint to initialise the model from (e.g. converted DeiT weights)")
    _add(g, "r_tokens", optional(int_or_list(lo=0)), None,
         "tokens removed in each block of pp_loc_list: an int, or one int per block (0 = dense); "
         "none = the model's default (ppt_*: 50)")
    _add(g, "pp_loc_list", optional(list_of(int_type(lo=0), unique=True)), None,
         "0-indexed blocks that compress tokens, e.g. 3,6,9; none = the model's default")
    _add(g, "threshold", optional(float_or_list(lo=0.0)), None,
         "policy threshold on the score variance used in training (below: pool, else prune): a float, or one "
         "per compression block (e.g. 3e-3,2e-3,1e-3); none = the model's default (ppt_*: 7e-5)")
    _add(g, "eval_threshold", optional(float_or_list(lo=0.0)), None,
         "threshold used for evaluation (a float or one per compression block); none = same as threshold")
    _add(g, "prop_attn", optional(str2bool), None,
         "proportional attention (log of token sizes added to the logits); none = the model's default")
    _add(g, "drop_rate", float_type(0.0, 1.0), 0.0, "dropout rate")
    _add(g, "drop_path_rate", float_type(0.0, 1.0), 0.1, "stochastic depth rate (linearly increasing per block)")
    _add(g, "img_size", optional(int_type(lo=1)), None, "model input resolution; none = image_size")
    _add(g, "ema", str2bool, False, "keep an exponential moving average of the weights")
    _add(g, "ema_decay", float_type(0.0, 1.0), 0.99996, "EMA decay per step (DeiT: 0.99996)")

    g = parser.add_argument_group("data")
    _add(g, "data_dir", str_type, "data/imagenet", "dataset root holding the train/val split folders")
    _add(g, "train_split", str_type, "train", "training split sub-directory")
    _add(g, "val_split", str_type, "val", "validation split sub-directory")
    _add(g, "num_parallel_workers", int_type(lo=1), 4, "data-loading workers per device")
    _add(g, "batch_size", int_type(lo=1), 128, "batch size per device")
    _add(g, "image_size", int_type(lo=1), 224, "train crop / eval image size")
    _add(g, "interpolation", choice("bilinear", "bicubic", "nearest"), "bicubic",
         "resize interpolation")
    _add(g, "scale", list_of(float_type(lo=0.0, lo_open=True), length=2), [0.08, 1.0],
         "RandomResizedCrop area scale range (min,max)")
    _add(g, "ratio", list_of(float_type(lo=0.0, lo_open=True), length=2), [0.75, 1.3333333333333333],
         "RandomResizedCrop aspect ratio range (min,max)")
    _add(g, "hflip", float_type(0.0, 1.0), 0.5, "horizontal flip probability")
    _add(g, "auto_augment", optional(str_type), "rand-m9-mstd0.5-inc1",
         "timm-style augmentation policy (rand-m9-mstd0.5-inc1 is DeiT's RandAugment); none = off")
    _add(g, "color_jitter", optional(float_type(lo=0.0)), 0.4,
         "color jitter strength (like timm, not applied when auto_augment is set); none = off")
    _add(g, "re_prob", float_type(0.0, 1.0), 0.25, "random erasing probability")
    _add(g, "mixup", float_type(lo=0.0), 0.8, "mixup alpha (0 = off)")
    _add(g, "cutmix", float_type(lo=0.0), 1.0, "cutmix alpha (0 = off)")
    _add(g, "mixup_prob", float_type(0.0, 1.0), 1.0, "probability of applying mixup or cutmix to a batch")
    _add(g, "mixup_switch_prob", float_type(0.0, 1.0), 0.5,
         "probability of cutmix instead of mixup when both are on")
    _add(g, "label_smoothing", float_type(0.0, 1.0), 0.1, "label smoothing")
    _add(g, "crop_pct", float_type(lo=0.0, hi=1.0, lo_open=True), 0.875,
         "eval: resize to image_size / crop_pct, then center-crop image_size")
    _add(g, "repeated_aug", str2bool, False, "repeated augmentation sampler (DeiT; 3 repeats)")
    _add(g, "mean", list_of(float_type(), length=3), [0.485, 0.456, 0.406],
         "normalisation mean in [0, 1] units (multiply by 255 for uint8 pipelines)")
    _add(g, "std", list_of(float_type(lo=0.0, lo_open=True), length=3), [0.229, 0.224, 0.225],
         "normalisation std in [0, 1] units")

    g = parser.add_argument_group("optimizer")
    _add(g, "opt", choice("adamw", "sgd", "momentum"), "adamw", "optimizer")
    _add(g, "lr", optional(float_type(lo=0.0)), None,
         "absolute peak learning rate; when set, lr_per_512 is ignored")
    _add(g, "lr_per_512", optional(float_type(lo=0.0)), 5e-4,
         "peak learning rate per 512 images: lr = lr_per_512 * batch_size * devices / 512 (DeiT rule)")
    _add(g, "weight_decay", float_type(lo=0.0), 0.05, "decoupled weight decay (AdamW) / L2 (SGD)")
    _add(g, "filter_bias_and_bn", str2bool, True,
         "no weight decay for biases, 1-D parameters (norms), pos_embed and cls_token")
    _add(g, "momentum", float_type(0.0, 1.0), 0.9, "momentum for sgd/momentum")
    _add(g, "betas", list_of(float_type(0.0, 1.0), length=2), [0.9, 0.999], "AdamW beta1,beta2")
    _add(g, "eps", float_type(lo=0.0, lo_open=True), 1e-8, "AdamW epsilon")

    g = parser.add_argument_group("schedule")
    _add(g, "scheduler", choice("cosine", "constant"), "cosine", "learning-rate schedule after warmup")
    _add(g, "epoch_size", int_type(lo=1), 300, "number of training epochs")
    _add(g, "warmup_epochs", float_type(lo=0.0), 5.0, "linear warmup length in epochs (per-step, may be fractional)")
    _add(g, "min_lr", float_type(lo=0.0), 1e-5, "final learning rate of the cosine (absolute, not scaled)")
    _add(g, "warmup_lr", float_type(lo=0.0), 1e-6, "learning rate at the first warmup step (absolute)")

    g = parser.add_argument_group("train")
    _add(g, "amp_level", choice("O0", "O1", "O2", "O3"), "O0", "mixed precision level")
    _add(g, "loss_scale_type", choice("fixed", "dynamic", "none"), "none", "loss scaling")
    _add(g, "loss_scale", float_type(lo=0.0, lo_open=True), 1024.0,
         "fixed loss scale, or the initial scale for dynamic")
    _add(g, "clip_grad", float_type(lo=0.0), 0.0, "clip gradients to this global L2 norm (0 = off)")
    _add(g, "ckpt_path", optional(str_type), None, "checkpoint to evaluate")
    _add(g, "resume", optional(str_type), None, "training checkpoint to resume from (weights, optimizer, epoch)")
    _add(g, "save_every", int_type(lo=1), 1, "save a checkpoint every N epochs")
    _add(g, "log_interval", int_type(lo=1), 50, "log every N training steps / evaluation batches (when not on a "
         "terminal, where evaluation shows one live line)")
    _add(g, "val_interval", int_type(lo=1), 1, "validate every N epochs")
    _add(g, "keep_checkpoints", int_type(lo=0), 5, "keep the newest N epoch checkpoints (0 = keep all)")

    g = parser.add_argument_group("distillation")
    _add(g, "distillation_type", choice("none", "hard"), "none",
         "hard: DeiT's hard distillation, the distillation head of a distilled student learns the teacher's top-1 "
         "class; none: no teacher (a distilled student then trains both heads on the targets through their mean)")
    _add(g, "teacher_model", optional(str_type), None,
         "registered model name of the teacher (DeiT's RegNetY-160 is not provided; e.g. deit_base_patch16_224)")
    _add(g, "teacher_checkpoint", optional(str_type), None,
         "the teacher's weights, any format the weight loader reads (converted .ckpt, DeiT/timm .pth/.safetensors/"
         ".npz, a tools/train.py checkpoint); its head must have num_classes classes")
    _add(g, "distillation_alpha", float_type(0.0, 1.0), 0.5,
         "loss = (1 - alpha) * loss(class head, targets) + alpha * CE(distillation head, teacher's top-1) (DeiT: 0.5)")

    g = parser.add_argument_group("eval")
    _add(g, "metrics_out", optional(str_type), None, "write evaluation metrics to this JSON file")
    return parser


def _options(parser):
    """{dest: action} for every option a YAML file may set (everything except -c/--config, -h)."""
    return {a.dest: a for a in parser._actions  # pylint: disable=protected-access
            if a.option_strings and a.dest not in ("help", "config")}


def default_config():
    """The parser defaults as a dict (no YAML, no command line)."""
    return {k: a.default for k, a in _options(build_parser()).items()}


# ----------------------------------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
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
        raise ConfigError(f"{path}: the top level must be a mapping of option: value, "
                          f"got a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: option names must be strings, got {', '.join(map(repr, bad))}")
    return data


def validate_config(cfg, parser=None, source="<config>"):
    """Check every key against the parser's options and convert every value with the option's type
    function. Returns a new dict. Raises ConfigError naming ``source``, the key, the value and the
    expected type."""
    parser = parser or build_parser()
    options = _options(parser)
    unknown = [k for k in cfg if k not in options]
    if unknown:
        lines = []
        for key in unknown:
            if key == "config":
                lines.append("'config' cannot be set inside a config file")
                continue
            close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.6)
            hint = f" (did you mean: {', '.join(close)}?)" if close else " (no similar option; see --help)"
            lines.append(f"unknown option {key!r}{hint}")
        raise ConfigError(f"{source}: " + "; ".join(lines))
    out = {}
    for key, value in cfg.items():
        action = options[key]
        try:
            out[key] = action.type(value)
        except argparse.ArgumentTypeError as err:
            raise ConfigError(f"{source}: invalid value for option '{key}': {err}") from None
    return out


def _check_namespace(args):
    """Cross-option checks and resolution of the 'same as' defaults. Returns an error message or None."""
    if args.lr is None and args.lr_per_512 is None:
        return "set one of lr (absolute) or lr_per_512 (scaled by the global batch)"
    if args.warmup_epochs > args.epoch_size:
        return f"warmup_epochs ({args.warmup_epochs}) exceeds epoch_size ({args.epoch_size})"
    if args.scale[0] > args.scale[1] or args.ratio[0] > args.ratio[1]:
        return "scale and ratio must be (min,max) with min <= max"
    if args.eval_threshold is None:
        args.eval_threshold = args.threshold
    if args.img_size is None:
        args.img_size = args.image_size
    return None


# The teacher and its loss (training only).
DISTILLATION_OPTIONS = ("distillation_type", "teacher_model", "teacher_checkpoint", "distillation_alpha")
# Options one tool reads and the other does not. A value given for them on the command line of the
# other tool would do nothing, so it is refused (a YAML recipe is shared by both and may set them).
TRAIN_ONLY = frozenset((
    "distribute", "seed", "output_dir", "threshold", "drop_rate", "drop_path_rate", "ema_decay", "train_split",
    "scale", "ratio", "hflip", "auto_augment", "color_jitter", "re_prob", "mixup", "cutmix", "mixup_prob",
    "mixup_switch_prob", "label_smoothing", "repeated_aug", "opt", "lr", "lr_per_512", "weight_decay",
    "filter_bias_and_bn", "momentum", "betas", "eps", "scheduler", "epoch_size", "warmup_epochs", "min_lr",
    "warmup_lr", "loss_scale_type", "loss_scale", "clip_grad", "resume", "save_every", "val_interval",
    "keep_checkpoints") + DISTILLATION_OPTIONS)
EVAL_ONLY = frozenset(("ckpt_path", "metrics_out"))
# tools/demo.py trains a dense and a PPT model into its own folders and evaluates their final weights.
DEMO_FIXED = frozenset(("model", "r_tokens", "output_dir", "ckpt_path", "metrics_out", "resume", "distribute",
                        "checkpoint_path"))
# Tools that evaluate a checkpoint and read no training option.
EVAL_TOOLS = ("eval", "analyze", "sweep", "export", "predict")
# tools/sweep.py sets these per setting from its own options.
SWEEP_FIXED = {"r_tokens": "use --r", "threshold": "use --thresholds", "eval_threshold": "use --thresholds"}
TOOL_HINTS = {
    ("eval", "threshold"): "use --eval_threshold",
    ("analyze", "threshold"): "use --eval_threshold",
    ("export", "threshold"): "use --eval_threshold (the exported graph runs at it)",
    ("predict", "threshold"): "use --eval_threshold",
    ("train", "ckpt_path"): "to start from weights use --checkpoint_path, to continue a run --resume",
    ("train", "metrics_out"): "training writes its metrics to output_dir/train.log",
}


def given_options(argv, parser=None):
    """Option names (dests) set on the command line ``argv`` (``--key value`` or ``--key=value``)."""
    parser = parser or build_parser()
    by_flag = {flag: a.dest for a in parser._actions for flag in a.option_strings}  # pylint: disable=protected-access
    given = []
    for token in argv:
        if token == "--":
            break
        dest = by_flag.get(token.split("=", 1)[0]) if token.startswith("-") else None
        if dest and dest not in ("help", "config") and dest not in given:
            given.append(dest)
    return given


def ineffective_options(args, given, tool=None):
    """``{option: why it would do nothing}`` for each option in ``given`` (set on the command line) that
    ``tool`` ("train", "eval", "analyze", "sweep", "demo" or None for no tool check) does not read, or that
    another setting shadows. Call before the 'same as' defaults are resolved (eval_threshold, img_size)."""
    out = {}
    for key in given:
        harmless = (key == "threshold" and args.eval_threshold is None) or (key == "distribute" and not args.distribute)
        if tool == "sweep" and key in SWEEP_FIXED:
            out[key] = f"is set by each setting of the sweep; {SWEEP_FIXED[key]}"
        elif tool in EVAL_TOOLS and key in TRAIN_ONLY and not harmless:
            hint = TOOL_HINTS.get((tool, key), "remove it")
            out[key] = f"is a training option that tools/{tool}.py does not use; {hint}"
        elif tool in ("analyze", "sweep") and key == "metrics_out":
            out[key] = f"is an option of tools/eval.py; tools/{tool}.py writes its numbers into --out"
        elif tool in ("export", "predict") and key == "metrics_out":
            out[key] = f"is an option of tools/eval.py that tools/{tool}.py does not use"
        elif tool == "demo" and key in DEMO_FIXED:
            out[key] = "is set by the demo itself (a dense and a PPT digits ViT, trained from scratch into " \
                       "outputs/demo); run tools/train.py or tools/eval.py to choose it"
        elif tool == "demo" and key in DISTILLATION_OPTIONS:
            out[key] = "does not apply to the demo, whose digits ViTs have no distillation token; distil with " \
                       "tools/train.py and a distilled model"
        elif tool == "train" and key in EVAL_ONLY:
            hint = TOOL_HINTS.get((tool, key), "")
            out[key] = f"is an option of tools/eval.py that training does not use; {hint}"
    shadows = (
        ("lr_per_512", args.lr is not None, f"lr is set ({args.lr}), which wins; pass --lr none to scale "
                                           "lr_per_512"),
        ("color_jitter", args.color_jitter is not None and args.auto_augment is not None,
         f"auto_augment is set ({args.auto_augment}) and, as in timm, color jitter is then not applied; "
         "pass --auto_augment none"),
        ("loss_scale", args.loss_scale_type == "none", "loss_scale_type is none; pass --loss_scale_type "
                                                      "fixed or dynamic"),
        ("ema_decay", not args.ema, "ema is off; pass --ema true"),
        ("momentum", args.opt == "adamw", "opt is adamw; momentum applies to --opt sgd or momentum"),
        ("betas", args.opt != "adamw", f"opt is {args.opt}; betas apply to --opt adamw"),
        ("eps", args.opt != "adamw", f"opt is {args.opt}; eps applies to --opt adamw"),
        ("mixup_prob", args.mixup <= 0 and args.cutmix <= 0, "mixup and cutmix are both 0"),
        ("mixup_switch_prob", args.mixup <= 0 or args.cutmix <= 0, "it chooses between mixup and cutmix, "
                                                                 "which needs both above 0"),
        ("warmup_lr", args.warmup_epochs <= 0, "warmup_epochs is 0"),
        ("min_lr", args.scheduler == "constant", "scheduler is constant; min_lr is the end of --scheduler "
                                                 "cosine"),
        ("jit_level", args.mode == "pynative", "mode is pynative; jit_level applies to --mode graph"),
        ("device_id", args.distribute and tool not in EVAL_TOOLS, "distribute is on: each process uses its rank's "
                                                          "device"),
        *((key, args.distillation_type == "none", "distillation_type is none; pass --distillation_type hard")
          for key in DISTILLATION_OPTIONS[1:]),
        ("checkpoint_path", tool in EVAL_TOOLS and args.ckpt_path is not None,
         f"tools/{tool}.py loads ckpt_path ({args.ckpt_path}); pass the weights with --ckpt_path"),
    )
    dense = args.r_tokens is not None and not any(
        args.r_tokens if isinstance(args.r_tokens, list) else [args.r_tokens])
    for key in ("threshold", "eval_threshold", "pp_loc_list", "prop_attn"):
        if dense:
            shadows += ((key, True, "r_tokens is 0, so no block compresses tokens"),)
    for key, shadowed, why in shadows:
        if shadowed and key in given and key not in out:
            out[key] = f"has no effect: {why}"
    return out


def parse_args(argv=None, tool=None):
    """Parse ``argv`` (default sys.argv[1:]): defaults < YAML of -c/--config < command line.
    With ``tool`` ("train", "eval", "analyze", "sweep" or "demo"), a command-line option that tool would not
    use, or that another setting shadows, is an error. User errors exit with status 2 and a message. Returns
    an argparse.Namespace."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(prog=parser.prog, add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config", type=str, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            defaults = validate_config(load_config(known.config), parser, source=known.config)
        except ConfigError as err:
            parser.error(str(err))
        parser.set_defaults(**defaults)
    args, extras = parser.parse_known_args(argv)
    if extras:
        valid = [s for a in parser._actions for s in a.option_strings]  # pylint: disable=protected-access
        parts = []
        for tok in extras:
            if tok.startswith("-") and not _looks_numeric(tok):
                name = tok.split("=", 1)[0]
                close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
                parts.append(f"{tok} (did you mean: {', '.join(close)}?)" if close else tok)
            else:
                parts.append(tok)
        parser.error("unrecognized arguments: " + " ".join(parts))
    ineffective = ineffective_options(args, given_options(argv, parser), tool)
    if ineffective:
        parser.error("; ".join(f"--{key} {why}" for key, why in ineffective.items()))
    msg = _check_namespace(args)
    if msg:
        parser.error(msg)
    return args


def _looks_numeric(tok):
    try:
        float(tok)
        return True
    except ValueError:
        return False


def save_config(args, path):
    """Write the merged configuration as YAML (atomically) so ``-c path`` reproduces the run."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    order = list(_options(build_parser()))
    # Only known options, so the file loads back with -c (attributes added at run time are dropped).
    data = {k: _plain(values[k]) for k in order if k in values}
    header = "# merged mindppt config"
    if values.get("config"):
        header += f" (recipe: {values['config']})"
    text = header + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    return atomic_write(path, text)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
