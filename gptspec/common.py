"""Helpers shared by the subcommands: choosing a model and a tokenizer, parsing id lists."""
from __future__ import annotations

import argparse

import numpy as np

import ref_numpy


def add_model_args(parser: argparse.ArgumentParser, default_model: str | None = "gpt2", numpy_dtype: bool = True) -> None:
    """--model / --weights / --random-init / --seed (/ --dtype), the same in every subcommand.
    `numpy_dtype=False` leaves --dtype to a subcommand that means something else by it."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=default_model, metavar="NAME",
                       help=f"a published model name ({', '.join(ref_numpy.PRESETS)}); default %(default)s")
    group.add_argument("--weights", metavar="DIR", help="load a checkpoint directory (any format weights/ reads)")
    group.add_argument("--random-init", action="store_true",
                       help="use seeded random weights of --model's size instead of real ones (runs offline)")
    group.add_argument("--seed", type=int, default=0, help="seed for --random-init and for sampling")
    if numpy_dtype:
        group.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                           help="NumPy computation dtype (default %(default)s)")


def load_model(args, dtype=None) -> tuple[ref_numpy.GPTConfig, dict]:
    """(config, params) from the --model/--weights/--random-init arguments, in `dtype`
    (default: the --dtype argument)."""
    dtype = np.dtype(dtype or args.dtype)
    if args.random_init:
        if args.weights:
            raise ValueError("--random-init and --weights exclude each other")
        config = ref_numpy.GPTConfig.from_name(args.model)
        return config, ref_numpy.init_params(config, args.seed, dtype=dtype)
    import weights  # the loaders sit a layer above the spec

    config, params = weights.load(checked_weights(args.weights) if args.weights else args.model)
    return config, ref_numpy.cast_params(params, dtype)


def load_tokenizer(args) -> ref_numpy.Tokenizer:
    """The tokenizer for --prompt: --vocab DIR, else the checkpoint's folder (--weights DIR, or the
    fetched --model NAME) if it holds tokenizer files."""
    if args.vocab:
        return ref_numpy.Tokenizer.from_dir(args.vocab)
    folder = checked_weights(args.weights) if args.weights else None
    if folder is None and args.model and not args.random_init:
        import weights

        folder = weights.cache.resolve(args.model)  # says how to fetch it when it is not there
    if folder is None:
        raise ValueError("--prompt needs a tokenizer: pass --vocab DIR (or --weights DIR holding tokenizer files)")
    try:
        return ref_numpy.Tokenizer.from_dir(folder)
    except FileNotFoundError as error:
        raise ValueError(f"--prompt needs a tokenizer: pass --vocab DIR ({error})") from None


def checked_weights(folder, argument: str = "--weights"):
    """--weights DIR after checking it: it exists, and a checkpoint of `gptspec train/finetune`
    matches the sha256 of each file its train_state.json records (a damaged file is an error
    naming it, not a silently different model)."""
    from gptspec.training.checkpoint import verified_checkpoint

    return verified_checkpoint(folder, argument)


def check_tokenizer_fits(tokenizer: ref_numpy.Tokenizer, config: ref_numpy.GPTConfig) -> None:
    """A tokenizer whose ids are not the model's vocabulary would feed it the wrong tokens."""
    if tokenizer.n_vocab != config.n_vocab:
        raise ValueError(f"the tokenizer {tokenizer.name} has {tokenizer.n_vocab} ids but the model has "
                         f"n_vocab={config.n_vocab}")


def parse_ids(text: str) -> list[int]:
    """'464, 3290 318' -> [464, 3290, 318] (commas and/or spaces)."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise ValueError("no token ids given")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"token ids must be integers separated by commas or spaces, got {text!r}") from None
