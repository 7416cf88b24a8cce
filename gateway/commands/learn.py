"""``aleacc-gateway learn``: samples and the secret in, the fitting scheme printed.

Offline: nothing is sent anywhere. The search itself is ``discover/learn.py``; this module reads
the inputs, runs the search over every core with a progress bar on a terminal, and
words the answer. It never prints the secret.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import closing
from multiprocessing import Pool
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from ..config import TenantSettings
from ..discover.candidates import CANDIDATES
from ..discover.learn import MAX_FIELDS, LearnError, Result, explain_first, learn
from ..discover.samples import (
    MAX_FILE_BYTES,
    MAX_SAMPLES,
    Sample,
    SampleError,
    decoded,
    parse_curl,
    parse_har,
    parse_raw,
    usable,
)
from ..forwarding import base_path
from ..secret import SecretError, read_secret
from ..toml_writer import signing_table
from .common import Commands, config_tenant

FOUND, NONE, SEVERAL = 0, 1, 2
MISS_CAUSES = (
    "a body changed on its way into the sample (re-indented, re-encoded, or cut by the "
    "copy): compare the body in the sample with the bytes that were sent",
    "a proxy that rewrote the path or query before Aleacc saw it (a base path added, "
    "a query re-ordered): the sample must show the URL Aleacc received",
    "a different secret or api_id than the one that signed the samples",
    "a layout outside the space searched (see --max-fields; api_id, request_id, "
    "timestamp and the target always signed; the README lists the fields and transforms)",
)


def add_parser(commands: Commands) -> None:
    """The ``learn`` subcommand's arguments."""
    learn = commands.add_parser(
        "learn",
        help="find the signing scheme from requests Aleacc accepted (offline)",
        description="Search the signing schemes for the one that reproduces every sample.",
    )
    learn.add_argument(
        "--curl",
        action="append",
        default=[],
        metavar="CMD",
        help="a 'Copy as cURL' command line (repeatable)",
    )
    learn.add_argument(
        "--har",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a HAR export: every amx-signed entry (repeatable)",
    )
    learn.add_argument(
        "--raw",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="an HTTP/1.1 request as bytes (repeatable)",
    )
    learn.add_argument(
        "--raw-scheme",
        choices=("https", "http"),
        default="https",
        help="the scheme of --raw requests' URLs (default: https)",
    )
    source = learn.add_mutually_exclusive_group(required=True)
    source.add_argument("--secret-env", metavar="NAME", help="variable holding the secret")
    source.add_argument("--secret-file", type=Path, metavar="PATH")
    source.add_argument("--config", type=Path, help="take the secret from this gateway config")
    learn.add_argument(
        "--tenant", metavar="NAME", help="with --config: this tenant's secret (default: [signing])"
    )
    learn.add_argument("--toml", action="store_true", help="print only the [signing] table")
    learn.add_argument(
        "--max-fields",
        type=int,
        default=MAX_FIELDS,
        choices=range(4, 10),
        metavar="N",
        help=f"the longest field list searched, 4-9 (default: "
        f"{MAX_FIELDS}; each more is about seven times the time)",
    )
    learn.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The command: 0 one fit, 1 none, 2 several (or bad input, said in one line)."""
    try:
        found = read_samples(args)
        samples = usable(found)
        if len(samples) < len(found):
            print(
                f"learn: {len(samples)} of {len(found)} samples used (duplicates dropped, "
                f"at most {MAX_SAMPLES})",
                file=sys.stderr,
            )
        secret, config_base = _secret(args)
        started = time.perf_counter()
        # The parts are independent and CPU-bound: one process per core, each part's
        # answer taken as it finishes (the bar moves from the start; learn() puts the
        # answers back in order). Leaving the block ends the workers, on Ctrl-C too.
        with (
            Pool(os.cpu_count() or 1, initializer=_leave_interrupts_to_the_parent) as workers,
            closing(_Progress()) as progress,
        ):
            result = learn(
                samples,
                secret,
                run=workers.imap_unordered,
                progress=progress,
                max_fields=args.max_fields,
            )
        elapsed = time.perf_counter() - started
    except (SampleError, LearnError, SecretError, ValueError) as exc:
        print(f"learn: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"learn: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return report(result, samples, elapsed, toml_only=args.toml, config_base=config_base)


def read_samples(args: argparse.Namespace) -> list[Sample]:
    """Every sample named on the command line, in order."""
    samples = [parse_curl(cmd, f"--curl #{i}") for i, cmd in enumerate(args.curl, 1)]
    for path in args.har:
        samples.extend(parse_har(decoded(_read(path), str(path)), str(path)))
    samples.extend(parse_raw(_read(p), str(p), args.raw_scheme) for p in args.raw)
    if not samples:
        raise SampleError("give at least one sample: --curl, --har or --raw")
    return samples


def _read(path: Path) -> bytes:
    """A sample file's bytes, at most MAX_FILE_BYTES of them read (OSError as it comes)."""
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SampleError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
    return data


def _secret(args: argparse.Namespace) -> tuple[bytes, tuple[Path, str] | None]:
    """The secret; and with --config, the config and its upstream URL's base path."""
    if args.config is None:
        if args.tenant is not None:
            raise ValueError("--tenant needs --config")
        settings = TenantSettings(
            name="learn", api_id="learn", secret_file=args.secret_file, secret_env=args.secret_env
        )
        return read_secret(settings), None
    config, tenant = config_tenant(args.config, args.tenant)
    return read_secret(tenant), (args.config, base_path(config.upstream_of(tenant)))


def base_path_note(base: str, config_base: tuple[Path, str] | None) -> str:
    """What a fit that signs the path below ``base`` means for upstream.url."""
    note = (
        f"It signs the path below the base path {base}: upstream.url must end in {base} "
        f"(like https://aleacc.example.com{base}), and the gateway signs what follows it."
    )
    if config_base is None:
        return note
    path, configured = config_base
    if configured == base:
        return f"{note} {path}: upstream.url has it."
    shown = configured or "no path"
    return f"{note} warning: {path}: upstream.url has {shown}, not {base}."


def _leave_interrupts_to_the_parent() -> None:
    # Ctrl-C reaches every process of the terminal's foreground group: the workers leave
    # it to the command, which stops them, instead of each printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Progress:
    """A progress bar on a terminal (stderr), shown from the first call; nothing in a pipe."""

    def __init__(self) -> None:
        self._bar: tqdm[NoReturn] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            # Ctrl-C while tqdm draws the bar would leave it on the screen, with no bar of
            # ours yet to clear it: heard, and raised once the bar is ours to close.
            # (Blocking the signal would not do: the pool's threads would still take it.)
            heard: list[int] = []
            previous = signal.signal(signal.SIGINT, lambda signum, _: heard.append(signum))
            try:
                self._bar = tqdm(
                    total=total,
                    disable=None,
                    file=sys.stderr,
                    unit="part",
                    desc="searching",
                    leave=False,
                )
            finally:
                signal.signal(signal.SIGINT, previous)
            if heard:
                raise KeyboardInterrupt
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def report(
    result: Result,
    samples: list[Sample],
    elapsed: float,
    toml_only: bool,
    config_base: tuple[Path, str] | None = None,
) -> int:
    """Print the answer; the exit code."""
    classes = result.classes
    base = result.bases.get(classes[0][0], "") if classes else ""
    if toml_only and len(classes) == 1 and not result.unseen:
        print(signing_table(classes[0][0]))
        if base:
            print(f"learn: {base_path_note(base, config_base)}", file=sys.stderr)
        return FOUND
    out = sys.stdout if classes else sys.stderr
    size = f"{len(samples)} sample(s), {result.tried:,} strings signed in {elapsed:.1f} s"
    if not classes:
        print(f"learn: no scheme reproduces every sample ({size}).", file=out)
        print(
            "The nearest candidates, the string to sign of the first sample under each:", file=out
        )
        for _, scheme in CANDIDATES[:2]:
            print(f"\n{signing_table(scheme)}", file=out)
            for line in explain_first(scheme, samples):
                print(f"  {line}", file=out)
        print("\nWhat usually causes a miss:", file=out)
        for cause in MISS_CAUSES:
            print(f"  - {cause}", file=out)
        return NONE
    advice = [f"add {label}" for label in result.differ_on] + [
        f"add a request carrying {name} (where it is signed is not known yet)"
        for name in result.unseen
    ]
    if len(classes) == 1 and not result.unseen:
        print(f"learn: one scheme fits every sample ({size}):\n")
        print(signing_table(classes[0][0]))
        if base:
            print(f"\n{base_path_note(base, config_base)}")
        print("\nThe first sample's string to sign (as `sign --explain` shows it):")
        for line in explain_first(classes[0][0], samples, base):
            print(f"  {line}")
        return FOUND
    kinds = f"{len(classes)} kinds of scheme fit" if len(classes) > 1 else "a scheme fits"
    print(f"learn: {kinds} every sample, and the samples cannot settle it ({size}).")
    print("To tell them apart: " + "; ".join(advice) + ".")
    for number, group in enumerate(classes[:3], 1):
        print(f"\n# fit {number} of {len(classes)}\n{signing_table(group[0])}")
    return SEVERAL
