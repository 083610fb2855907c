"""gptspec parity: run the MindSpore backend and the float64 NumPy spec on the same input and
compare every layer.

  gptspec parity                                   seeded random GPT-2 124M, fp32, PyNative (offline)
  gptspec parity --amp O2 --mode graph             fp16 mixed precision, compiled graph
  gptspec parity --arch gpt1                       seeded random GPT-1 (openai-gpt sizes)
  gptspec parity --weights DIR --prompt "Hello"    a checkpoint, a text prompt (tokenizer from DIR or --vocab)
  gptspec parity --json                            the same report as JSON

Prints one row per traced tensor (shape, max abs / rel error, the bound it is held to, where the
worst error is, pass/fail), the logits' top-1 agreement and KL, and a greedy-generation
comparison.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from ref_numpy import GPTConfig, check_params

from gptspec.cli import EXIT_BACKEND_RAISED, EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, BackendRaised
from gptspec.common import add_model_args, check_tokenizer_fits, load_model, load_tokenizer, parse_ids
from gptspec.parity import probe_params, run_parity
from gptspec.tolerances import AMP_LEVELS
from ref_numpy.validation import as_token_ids, check_length

DEFAULT_MODEL = {"gpt1": "openai-gpt", "gpt2": "gpt2"}
DEFAULT_PROMPT_TOKENS = 16

EXIT_STATUSES = f"""exit status:
  {EXIT_OK}  every bound held and the greedy generations agree
  {EXIT_CHECK_FAILED}  a bound failed (the report names the tensor, the position and the bound)
  {EXIT_BAD_INPUT}  bad input: an argument, a checkpoint, a prompt, or a missing extra (one line on stderr)
  {EXIT_BACKEND_RAISED}  the backend raised while running (one line on stderr naming the exception and where;
     GPTSPEC_DEBUG=1 shows the traceback)"""


def register(subparsers):
    parser = subparsers.add_parser("parity", help="compare the MindSpore backend with the NumPy spec, layer by layer",
                                   description=__doc__.split("\n\n")[0], epilog=EXIT_STATUSES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, default_model=None, numpy_dtype=False)
    parser.add_argument("--arch", choices=tuple(DEFAULT_MODEL),
                        help="with no --model/--weights: a random model of this architecture (default gpt2)")
    parser.add_argument("--amp", choices=AMP_LEVELS, default="O0", help="MindSpore AMP level (default %(default)s)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"),
                        help="the AMP low-precision dtype (default float16; ignored at O0)")
    parser.add_argument("--mode", choices=("pynative", "graph"), default="pynative")
    parser.add_argument("--prompt", metavar="TEXT", help="prompt text (needs --vocab or tokenizer files in --weights)")
    parser.add_argument("--prompt-ids", metavar="IDS", help=f"prompt token ids (default: {DEFAULT_PROMPT_TOKENS} "
                                                            f"random ids drawn with --seed)")
    parser.add_argument("--vocab", metavar="DIR", help="tokenizer folder for --prompt")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens to compare (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def resolve_model_args(args) -> None:
    """No --model/--weights: a seeded random model of --arch, so the command runs offline."""
    if args.model is None and args.weights is None:
        args.model = DEFAULT_MODEL[args.arch or "gpt2"]
        args.random_init = True
    elif args.arch is not None:
        raise ValueError("--arch chooses the random model; with --model or --weights the checkpoint decides it")
    elif args.model is None:
        args.model = "gpt2"  # unused: --weights names the checkpoint


def prompt_ids(args, config) -> np.ndarray:
    if args.prompt is not None:
        tokenizer = load_tokenizer(args)
        check_tokenizer_fits(tokenizer, config)
        return np.array(tokenizer.encode(args.prompt), dtype=np.int64)
    if args.prompt_ids is not None:
        return np.array(parse_ids(args.prompt_ids), dtype=np.int64)
    n = min(DEFAULT_PROMPT_TOKENS, config.n_ctx - max(args.max_new_tokens, 0))
    return np.random.default_rng(args.seed).integers(0, config.n_vocab, size=max(n, 1))


def run(args) -> int:
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt is not None and args.prompt_ids is not None:
        raise ValueError("give either --prompt or --prompt-ids, not both")
    if args.amp == "O0" and args.dtype is not None:
        raise ValueError(f"--dtype {args.dtype} needs an AMP level (--amp O1, O2 or O3); O0 runs in float32")
    resolve_model_args(args)
    if args.random_init:  # probe-scale weights: GPT-2's own init would hide an erf GELU (see probe_params)
        if args.weights:
            raise ValueError("--random-init and --weights exclude each other")
        config = GPTConfig.from_name(args.model)
        params = probe_params(config, args.seed)
    else:
        config, params = load_model(args, dtype="float32")
    ids = prompt_ids(args, config)
    check_backend_input(args, config, params, ids)
    try:
        report = run_parity(config, params, ids, amp_level=args.amp, dtype=args.dtype, mode=args.mode,
                            max_new_tokens=args.max_new_tokens)
    except Exception as error:  # every input was checked above: what is left is the backend's doing
        raise BackendRaised("the backend raised") from error
    if args.random_init:
        report.notes.append(f"model: seeded random {args.model} sizes (--seed {args.seed}) at probe scale "
                            f"(gptspec.parity.probe_params), not trained weights")
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table())
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def check_backend_input(args, config, params, ids) -> None:
    """Everything run_parity would refuse as bad input (exit 2), checked before the backend runs,
    so that an exception raised while it runs is the backend's (exit 3): the prompt fits the
    vocabulary and the context, the params fit the config, the extra is installed, the device has
    the AMP dtype's kernels."""
    check_params(config, params)
    check_length(as_token_ids(ids, config).shape[1], args.max_new_tokens, config)
    try:
        import ms_backend
    except ImportError as error:
        raise ValueError(f"gptspec parity needs the MindSpore backend ({error}); install the extra: "
                         f"pip install -e '.[mindspore]'") from None
    ms_backend.precision_for(args.amp, args.dtype)
