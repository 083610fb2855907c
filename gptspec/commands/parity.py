"""gptspec parity: run a backend (default MindSpore) and the float64 NumPy spec on the same input
and compare every layer -- or, with --train, the loss, every gradient and one update.

  gptspec parity                                   seeded random GPT-2 124M, fp32, PyNative (offline)
  gptspec parity --amp O2 --mode graph             fp16 mixed precision, compiled graph
  gptspec parity --arch gpt1                       seeded random GPT-1 (openai-gpt sizes)
  gptspec parity --weights DIR --prompt "Hello"    a checkpoint, a text prompt (tokenizer from DIR or --vocab)
  gptspec parity --backend hf --option dtype=float16   Hugging Face transformers on PyTorch, fp16
  gptspec parity --backend mymodule:make_backend   any backend following gptspec/backend.py's protocol
  gptspec parity --train [--head 3]                the loss, every gradient, the grad norm, one AdamW update
  gptspec parity --json                            the same report as JSON

Prints one row per traced tensor (shape, max abs / rel error, the bound it is held to, where the
worst error is, pass/fail), the logits' top-1 agreement and KL, and a greedy-generation
comparison.  What the backend does not provide (a trace, a KV cache, a dtype log, gradients) is
named in the report as not provided.
"""
from __future__ import annotations

import argparse
import importlib
import json
import threading

import numpy as np

from ref_numpy import GPTConfig, check_params

from gptspec.backend import BUILTIN_BACKENDS, BackendProtocolError, make_backend, parse_options
from gptspec.cli import EXIT_BACKEND_RAISED, EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, BackendRaised
from gptspec.common import add_model_args, check_tokenizer_fits, load_model, load_tokenizer, parse_ids
from gptspec.parity import probe_params, run_parity
from gptspec.train_parity import run_train_parity, training_batch
from gptspec.tolerances import AMP_LEVELS
from ref_numpy.validation import as_token_ids, check_length

DEFAULT_MODEL = {"gpt1": "openai-gpt", "gpt2": "gpt2"}
DEFAULT_PROMPT_TOKENS = 16

EXIT_STATUSES = f"""exit status:
  {EXIT_OK}  every bound held and the greedy generations agree
  {EXIT_CHECK_FAILED}  a bound failed (the report names the tensor, the position and the bound)
  {EXIT_BAD_INPUT}  bad input: an argument, a checkpoint, a prompt, a --backend that cannot be imported, an
     --option its factory refuses, or a missing extra (one line on stderr)
  {EXIT_BACKEND_RAISED}  the backend raised while running, or answered outside the protocol (a wrong type, shape,
     dtype or structure; trace names unknown or missing): one line on stderr naming the problem;
     GPTSPEC_DEBUG=1 shows the traceback"""


def register(subparsers):
    parser = subparsers.add_parser("parity", help="compare a backend (default MindSpore) with the NumPy spec, layer by "
                                                  "layer",
                                   description=__doc__.split("\n\n")[0], epilog=EXIT_STATUSES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, default_model=None, numpy_dtype=False)
    parser.add_argument("--arch", choices=tuple(DEFAULT_MODEL),
                        help="with no --model/--weights: a random model of this architecture (default gpt2)")
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", default="mindspore", metavar="NAME|MODULE:FACTORY",
                         help=f"the implementation to check: {', '.join(BUILTIN_BACKENDS)} or MODULE:FACTORY, a "
                              f"factory(config, params, **options) importable from the current directory "
                              f"(gptspec/backend.py states the protocol); default %(default)s")
    backend.add_argument("--option", action="append", default=[], metavar="K=V",
                         help="an option for the backend's factory (repeatable), e.g. dtype=float16, mode=graph")
    backend.add_argument("--amp", choices=AMP_LEVELS,
                         help="AMP level (the option amp_level; MindSpore default O0)")
    backend.add_argument("--dtype", choices=("float16", "bfloat16"),
                         help="the AMP low-precision dtype (the option dtype; default float16; needs --amp O1-O3)")
    backend.add_argument("--mode", choices=("pynative", "graph"), help="MindSpore execution mode (the option mode; "
                                                                       "default pynative)")
    parser.add_argument("--train", action="store_true",
                        help="training parity: the loss and every gradient of a padded batch, the grad norm, one "
                             "clipped AdamW update with weight decay, and under float16 an injected overflow")
    parser.add_argument("--head", type=int, metavar="N",
                        help="with --train: also GPT-1's classifier objective with an N-class head")
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


def backend_options(args) -> dict:
    """--option K=V plus --amp / --dtype / --mode as the options amp_level / dtype / mode."""
    options = parse_options(args.option)
    for flag, key in (("amp", "amp_level"), ("dtype", "dtype"), ("mode", "mode")):
        value = getattr(args, flag)
        if value is not None:
            if key in options:
                raise ValueError(f"--{flag} and --option {key}=... both set {key}: give one")
            options[key] = value
    if args.backend == "mindspore" and options.get("amp_level", "O0") == "O0" and options.get("dtype") is not None:
        raise ValueError(f"--dtype {options['dtype']} needs an AMP level (--amp O1, O2 or O3); O0 runs in float32")
    return options


def run(args) -> int:
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt is not None and args.prompt_ids is not None:
        raise ValueError("give either --prompt or --prompt-ids, not both")
    if args.head is not None and not args.train:
        raise ValueError("--head adds the classifier objective to --train's checks: give --train too")
    if args.head is not None and args.head < 2:
        raise ValueError(f"--head takes the number of classes, an integer >= 2, got {args.head}")
    options = backend_options(args)
    resolve_model_args(args)
    if args.backend == "mindspore":
        import_in_background("ms_backend")
    if args.random_init:  # probe-scale weights: GPT-2's own init would hide an erf GELU (see probe_params)
        if args.weights:
            raise ValueError("--random-init and --weights exclude each other")
        config = GPTConfig.from_name(args.model)
        params = probe_params(config, args.seed)
    else:
        config, params = load_model(args, dtype="float32")
    ids = prompt_ids(args, config)
    check_backend_input(args, config, params, ids, options)
    backend = build_backend(args, config, params, options)
    if args.train:
        training_batch(ids)  # the prompt must make a batch: bad input, before the backend runs
        backend.require("gradients", "gptspec parity --train")
        if args.head is not None:
            backend.require("classifier", "gptspec parity --train --head")
    try:
        if args.train:
            report = run_train_parity(config, params, backend, ids, head_classes=args.head, seed=args.seed)
        else:
            report = run_parity(config, params, ids, backend=backend, max_new_tokens=args.max_new_tokens)
    except BackendProtocolError as error:
        raise BackendRaised("the backend broke the protocol:") from error
    except Exception as error:  # every input was checked above: what is left is the backend's doing
        raise BackendRaised("the backend raised") from error
    if args.random_init:
        report.notes.append(f"model: seeded random {args.model} sizes (--seed {args.seed}) at probe scale "
                            f"(gptspec.parity.probe_params), not trained weights")
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table())
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def import_in_background(module: str) -> None:
    """Start importing `module` in a thread: MindSpore's import (~1.5 s) then runs while NumPy draws
    or loads the weights, which it does without the GIL.  The later `import` waits for this one (the
    import lock); if it fails, the later one raises the error itself."""
    def quietly():
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 -- reported by the import that needs the module
            pass

    threading.Thread(target=quietly, daemon=True).start()


def build_backend(args, config, params, options):
    """The backend under test.  A factory's ValueError is a refused option (bad input, exit 2);
    anything else it raises, or an object outside the protocol, is the backend's (exit 3)."""
    try:
        return make_backend(args.backend, config, params, options)
    except ValueError:
        raise
    except BackendProtocolError as error:
        raise BackendRaised("the backend broke the protocol:") from error
    except Exception as error:
        raise BackendRaised(f"building the {args.backend} backend raised") from error


def check_backend_input(args, config, params, ids, options: dict) -> None:
    """Everything run_parity would refuse as bad input (exit 2), checked before the backend runs,
    so that an exception raised while it runs is the backend's (exit 3): the prompt fits the
    vocabulary and the context, the params fit the config; for MindSpore the extra is installed
    and the device has the AMP dtype's kernels."""
    check_params(config, params)
    check_length(as_token_ids(ids, config).shape[1], 0 if args.train else args.max_new_tokens, config)
    if args.backend != "mindspore":
        return
    try:
        import ms_backend
    except ImportError as error:
        raise ValueError(f"gptspec parity needs the MindSpore backend ({error}); install the extra: "
                         f"pip install -e '.[mindspore]'") from None
    ms_backend.precision_for(options.get("amp_level", "O0"), options.get("dtype"))
