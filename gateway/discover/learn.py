"""Which signing scheme reproduces requests that Aleacc accepted: a search, pure.

The space (README, "Finding Aleacc's field list"): ordered choices of fields, each
group at most once, each with its plausible transform chains; the two separators; the
secret decoded each way it decodes. The header gives the rest: the timestamp's unit
from its size, the signature's encoding from its form.

The search walks sequences depth first on the first sample, carrying the HMAC's inner
state along (one ``update`` per field, a copy per branch), and checks the other samples
only where the first one matches. Sibling fields with the same values on every sample
lead to the same strings, so only one of them is walked; the fits are widened back to
every such alternative afterwards and grouped into schemes that sign every request
alike (told apart on a set of probe requests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from multidict import CIMultiDict

from ..request_ids import form_of
from ..signing import (
    SECRET_ENCODINGS,
    Context,
    FieldPlan,
    RequestParts,
    Scheme,
    compile_scheme,
    decode_secret,
    parse_field,
)
from .samples import Sample

SEPARATORS = ("\n", "")
MAX_FIELDS = 7  # the longest field list searched: Aleacc's default with both headers
SESSION = "X-Player-Session-Id"
CLIENT_IP = "X-Client-Ip"
_BODY_CHAINS = ("", "|md5|base64", "|sha256|base64", "|md5|hex", "|sha256|hex")

# (group, expressions): a sequence takes at most one expression of a group. The order
# is the order they are tried and, among equal fits, preferred.
VOCABULARY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("api_id", ("api_id",)),
    ("request_id", ("request_id",)),
    ("timestamp", ("timestamp",)),
    ("session", (f"header:{SESSION}?", f"header:{SESSION}")),
    ("client_ip", (f"header:{CLIENT_IP}?", f"header:{CLIENT_IP}")),
    ("method", ("method", "method|lower")),
    # The target as Aleacc's example signs it, as the 2015 sample does (the absolute
    # URI lower-cased and URL-encoded), and the plain forms between.
    (
        "target",
        (
            "path_and_query",
            "path_and_query|lower|urlencode",
            "url",
            "url|lower",
            "url|lower|urlencode",
            "path",
        ),
    ),
    ("query", ("query",)),
    ("content_type", ("content_type",)),
    ("body", tuple(f"body{c}" for c in _BODY_CHAINS)),
)
# A sequence is a candidate only when it signs these: the header's own values (a
# signature without the request id and time could be replayed) and the target (or it
# could be moved to another path).
REQUIRED = frozenset({"api_id", "request_id", "timestamp", "target"})


class LearnError(ValueError):
    """The samples cannot be searched (they disagree on a fact of their headers)."""


@dataclass(frozen=True, slots=True)
class Atom:
    """One field expression and its value on every sample (None: left out)."""

    group: str
    expression: str
    values: tuple[bytes | None, ...]
    # For the incoming_* fields: the base path they imply (the samples' common prefix
    # that the upstream URL would have to end in); "" for every other field.
    base: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """What the samples' headers say for themselves."""

    api_id: str
    timestamp_unit: str
    signature_encoding: str
    # The form every sample's request id has; the default where they differ or have
    # none of the forms (a server that took them accepts any token).
    request_id_format: str = "hex32"


@dataclass(frozen=True, slots=True)
class Task:
    """One part of the space: a key, a separator and the first field of the sequence."""

    secret_encoding: str
    separator: str
    first: int  # index into the atom pool
    key: bytes = field(repr=False)


@dataclass(slots=True)
class Result:
    """The outcome: fitting schemes grouped by how they sign, and the space's size."""

    classes: list[list[Scheme]]
    tried: int
    facts: Facts
    differ_on: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)
    # The base path a fit that signs an incoming_* field implies (absent: none).
    bases: dict[Scheme, str] = field(default_factory=dict)


def read_facts(samples: Sequence[Sample]) -> Facts:
    """The api_id, timestamp unit and signature encoding; LearnError if samples disagree."""
    if not samples:
        raise LearnError("no samples")
    units = {"ms" if s.auth.timestamp >= 10**11 else "s" for s in samples}
    encodings = {s.auth.signature_encoding for s in samples}
    api_ids = {s.auth.api_id for s in samples}
    for what, found in (
        ("api_id", api_ids),
        ("timestamp unit", units),
        ("signature encoding", encodings),
    ):
        if len(found) > 1:
            raise LearnError(f"the samples disagree on the {what}: {', '.join(sorted(found))}")
    forms = {form_of(s.auth.request_id) for s in samples}
    form = forms.pop() if len(forms) == 1 else None
    return Facts(api_ids.pop(), units.pop(), encodings.pop(), form or "hex32")


def tasks(secret: bytes, pool: Sequence[Atom]) -> list[Task]:
    """The space cut into parts: every key the secret decodes to, both separators, and
    each distinct first field."""
    found: list[Task] = []
    for encoding in SECRET_ENCODINGS:
        try:
            key = decode_secret(secret, encoding)
        except ValueError:
            continue
        # The first field of each part: one atom of each set the search walks as one
        # (see _walked), none that the searched sample leaves out.
        walked = search_sample(pool)
        firsts = {
            _walked(a, walked): i
            for i, a in reversed(list(enumerate(pool)))
            if a.values[walked] is not None
        }
        for separator in SEPARATORS:
            found.extend(Task(encoding, separator, i, key) for i in sorted(firsts.values()))
    return found


def search_sample(pool: Sequence[Atom]) -> int:
    """The sample the search signs: the one that leaves out the fewest fields, so the
    fewest sequences give one string (the first of those)."""
    count = len(pool[0].values) if pool else 1
    return min(range(count), key=lambda i: sum(a.values[i] is None for a in pool))


def _walked(atom: Atom, walked: int) -> tuple[str, bytes | None]:
    """Atoms of one group with the same value on the searched sample give the same
    strings there: the search walks one of each and, on a hit, tries every member on
    every sample (``_members``)."""
    return (atom.group, atom.values[walked])


def atoms(samples: Sequence[Sample]) -> list[Atom]:
    """Every vocabulary expression with its values on the samples.

    Left out: an optional header absent from every sample (adding it changes nothing).
    """
    found = []
    for group, expressions in VOCABULARY:
        for expression in expressions:
            plan = parse_field(expression)
            values = tuple(_value(plan, s) for s in samples)
            if all(v is None for v in values):
                continue
            found.append(Atom(group, expression, values))
    # The path below a base path Aleacc may be hosted under: each prefix at a "/" that
    # every sample's path shares (for /api/v1/Player/SignIn: /api, /api/v1).
    for base in base_paths(samples):
        for expression in ("incoming_path_and_query", "incoming_path"):
            plan = parse_field(expression)
            rebased = [replace(s, parts=s.parts._replace(base_path=base)) for s in samples]
            found.append(Atom("target", expression, tuple(_value(plan, s) for s in rebased), base))
    return found


def base_paths(samples: Sequence[Sample]) -> list[str]:
    """The prefixes at a "/" boundary that every sample's path has, shortest first, each
    leaving at least two segments below it, as Aleacc's own paths have (/player/signin):
    for /api/Player/SignIn, /api (below it /Player/SignIn), not /api/Player."""
    paths = [s.parts.path.split("/")[1:] for s in samples]  # "/api/x" -> ["api", "x"]
    shortest = min(len(p) for p in paths)
    bases = []
    for depth in range(1, shortest - 1):
        segments = {tuple(p[:depth]) for p in paths}
        if len(segments) != 1:
            break
        bases.append("/" + "/".join(segments.pop()))
    return bases


def base_of(fields: Iterable[Atom]) -> str:
    """The base path a sequence implies ("" when it signs no incoming_* field)."""
    return next((a.base for a in fields if a.base), "")


def _value(plan: FieldPlan, sample: Sample) -> bytes | None:
    context = Context(sample.auth.api_id, sample.auth.request_id, str(sample.auth.timestamp))
    value = plan.value(sample.parts, context)
    return None if plan.optional and not value else value


def _target(sample: Sample, encoding: str) -> bytes:
    if encoding == "hex":
        return bytes.fromhex(sample.auth.signature)
    return base64.b64decode(sample.auth.signature)


def search(
    task: Task,
    samples: Sequence[Sample],
    pool: Sequence[Atom],
    facts: Facts,
    max_fields: int = MAX_FIELDS,
) -> tuple[list[tuple[Atom, ...]], int]:
    """The sequences that reproduce every sample under ``task``; and how many distinct
    strings were signed to find them.

    Only the searched sample (``search_sample``) is signed in the walk, each distinct
    string of it once: of the fields with one value there, one stands for all, and the
    fields it leaves out (an optional header it lacks) are not walked at all. A string
    that matches its signature is then tried with every field it stood for, and with
    the left-out fields put in every place, on every sample (``_candidates``).
    """
    walked = search_sample(pool)
    block = hashlib.sha256().block_size
    key = task.key if len(task.key) <= block else hashlib.sha256(task.key).digest()
    key = key.ljust(block, b"\0")
    inner0 = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer0 = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    target = _target(samples[walked], facts.signature_encoding)
    separator = task.separator.encode()
    first = [a.values[walked] for a in pool]
    fits: list[tuple[Atom, ...]] = []
    tried = 0
    chosen: list[Atom] = []
    # Plain ints and lists in the hot loop: a tuple of values hashes anew every time.
    groups = sorted({a.group for a in pool})
    group_of = [groups.index(a.group) for a in pool]
    required = [a.group in REQUIRED for a in pool]
    classes: dict[tuple[str, bytes | None], int] = {}
    alike = [classes.setdefault(_walked(a, walked), len(classes)) for a in pool]
    used = [False] * len(groups)
    # One field of each walked set, the first (a set is one group's: used alike), and
    # none the searched sample leaves out.
    representatives: dict[int, int] = {}
    for i, value in enumerate(first):
        if value is not None:
            representatives.setdefault(alike[i], i)
    everything = sorted(representatives.values())
    # Each field's bytes after the separator, joined once here rather than at every node.
    joined = [separator + value if value is not None else b"" for value in first]

    # A copy and an update per node; a copy, an update and two digests per complete
    # sequence; no call for the last level.
    def walk(inner: hashlib._Hash, pieces: list[bytes], nexts: Iterable[int], missing: int) -> None:
        nonlocal tried
        room = max_fields - len(chosen) - 1  # fields left after this one
        for i in nexts:
            if used[group_of[i]]:
                continue
            state = inner.copy()
            state.update(pieces[i])
            left = missing - required[i]
            chosen.append(pool[i])
            if not left:
                tried += 1
                outer = outer0.copy()
                outer.update(state.digest())
                if outer.digest() == target:
                    fits.extend(
                        c
                        for c in _candidates(chosen, pool, walked, max_fields)
                        if _all_match(task, samples, list(c), facts)
                    )
            if room and room >= left:
                used[group_of[i]] = True
                walk(state, joined, everything, left)
                used[group_of[i]] = False
            chosen.pop()

    # The first field has no separator before it.
    walk(inner0, [value or b"" for value in first], [task.first], len(REQUIRED))
    return fits, tried


def _candidates(
    chosen: Sequence[Atom], pool: Sequence[Atom], walked: int, max_fields: int
) -> Iterator[tuple[Atom, ...]]:
    """Every sequence that signs the searched sample as ``chosen`` does: each field
    swapped for one of its group with the same value there, then the fields the sample
    leaves out inserted (at most one per unused group) in every place."""
    members = [
        [b for b in pool if b.group == a.group and b.values[walked] == a.values[walked]]
        for a in chosen
    ]
    left_out = [b for b in pool if b.values[walked] is None]
    for combination in itertools.product(*members):
        yield from _insertions(combination, left_out, max_fields)


def _insertions(
    sequence: tuple[Atom, ...], left_out: Sequence[Atom], max_fields: int
) -> Iterator[tuple[Atom, ...]]:
    yield sequence
    if len(sequence) >= max_fields:
        return
    groups = {a.group for a in sequence}
    for k, atom in enumerate(left_out):
        if atom.group in groups:
            continue
        for place in range(len(sequence) + 1):
            longer = (*sequence[:place], atom, *sequence[place:])
            # Later left-out fields only: each set of insertions is made once.
            yield from _insertions(longer, left_out[k + 1 :], max_fields)


def scheme_of(sequence: Iterable[Atom], task: Task, facts: Facts) -> Scheme:
    """The scheme a found sequence stands for."""
    return Scheme(
        fields=tuple(a.expression for a in sequence),
        separator=task.separator,
        secret_encoding=task.secret_encoding,
        signature_encoding=facts.signature_encoding,
        timestamp_unit=facts.timestamp_unit,
        request_id_format=facts.request_id_format,
    )


def _all_match(task: Task, samples: Sequence[Sample], chosen: list[Atom], facts: Facts) -> bool:
    # The real signing code has the last word: a fit is what the gateway would sign.
    plan = compile_scheme(scheme_of(chosen, task, facts))
    base = base_of(chosen)
    for sample in samples:
        context = Context(sample.auth.api_id, sample.auth.request_id, str(sample.auth.timestamp))
        message = plan.string_to_sign(sample.parts._replace(base_path=base), context)
        if not hmac.compare_digest(plan.signature(task.key, message), sample.auth.signature):
            return False
    return True


def widen(fit: tuple[Atom, ...], pool: Sequence[Atom]) -> Iterator[tuple[Atom, ...]]:
    """``fit`` and every sequence that differs from it only by fields with the same
    values on every sample (what the walk skipped)."""
    seen = {fit}
    queue = [fit]
    while queue:
        current = queue.pop()
        yield current
        groups = {a.group for a in current}
        for i, atom in enumerate(current):
            for other in pool:
                if other is atom or other.values != atom.values:
                    continue
                if other.group != atom.group and other.group in groups:
                    # Swap two equal-valued fields of different groups, or skip.
                    j = next((k for k, a in enumerate(current) if a.group == other.group), None)
                    if j is None or current[j] is not other:
                        continue
                    swapped = list(current)
                    swapped[i], swapped[j] = other, atom
                    candidate = tuple(swapped)
                else:
                    candidate = (*current[:i], other, *current[i + 1 :])
                if candidate not in seen and {a.group for a in candidate} >= REQUIRED:
                    seen.add(candidate)
                    queue.append(candidate)


# Requests that tell schemes apart: a label each, for "add <label>". Each carries
# X-Client-Ip, as every request the gateway sends does: schemes that differ only on
# requests without it sign the gateway's requests alike.
def _probe(
    label: str, method: str, target: str, body: bytes = b"", **headers: str
) -> tuple[str, RequestParts]:
    h: CIMultiDict[str] = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
    # Under a base path, so that signing the incoming path and the whole one differ.
    return label, RequestParts(method, "https", "aleacc.example.com", target, h, body, "/api")


TELLERS: tuple[tuple[str, RequestParts], ...] = (
    _probe("a POST with a JSON body", "POST", "/api/player/signin", b'{"A": 1}', Content_Type="application/json", X_Client_Ip="192.0.2.1"),  # noqa: E501
    _probe(f"a request carrying {SESSION}", "GET", "/api/player/balance", X_Player_Session_Id="f00d", X_Client_Ip="192.0.2.1"),  # noqa: E501
    _probe(f"a request without {SESSION}", "GET", "/api/player/balance", X_Client_Ip="192.0.2.1"),
    _probe("a request with a query", "GET", "/api/player/history?From=1&to=%20x", X_Client_Ip="192.0.2.1"),  # noqa: E501
    _probe("a path with upper-case letters", "GET", "/api/Player/Balance", X_Client_Ip="192.0.2.1"),
    _probe("a path with characters that need escaping", "GET", "/api/a%20b~c", X_Client_Ip="192.0.2.1"),  # noqa: E501
    _probe("a request with another method (e.g. DELETE)", "DELETE", "/api/player/balance", X_Client_Ip="192.0.2.1"),  # noqa: E501
    _probe("a POST whose body is not JSON (another Content-Type)", "POST", "/api/x", b"a=1", Content_Type="text/plain", X_Client_Ip="192.0.2.1"),  # noqa: E501
)  # fmt: skip


def _signature_on(scheme: Scheme, key: bytes) -> tuple[str, ...]:
    plan = compile_scheme(scheme)
    context = Context("api", "1", "1433313039")
    return tuple(plan.signature(key, plan.string_to_sign(parts, context)) for _, parts in TELLERS)


def classify(schemes: Sequence[Scheme], secret: bytes) -> tuple[list[list[Scheme]], list[str]]:
    """Group schemes that sign every probe request alike; the labels of the probe
    requests on which the groups differ."""
    groups: dict[tuple[str, ...], list[Scheme]] = {}
    for scheme in schemes:
        key = decode_secret(secret, scheme.secret_encoding)
        groups.setdefault(_signature_on(scheme, key), []).append(scheme)
    classes = sorted(groups.values(), key=lambda c: _preference(c[0]))
    signatures = list(groups)
    differ = [label for i, (label, _) in enumerate(TELLERS) if len({s[i] for s in signatures}) > 1]
    return [sorted(c, key=_preference) for c in classes], differ


def _preference(scheme: Scheme) -> tuple[int, ...]:
    # Fewer and simpler fields first, then the vocabulary's own order.
    order = {e: i for i, e in enumerate(e for _, es in VOCABULARY for e in es)}
    return (
        len(scheme.fields),
        sum(e.count("|") for e in scheme.fields),
        SEPARATORS.index(scheme.separator),
        *(order.get(e, 99) for e in scheme.fields),
    )


Found = tuple[list[tuple[Atom, ...]], int]
# A part of the space and its place in the answer's order: a runner may give the parts
# back in any order (as they finish), the answer is the same.
Part = tuple[int, Task]
Runner = Callable[[Callable[[Part], tuple[int, Found]], list[Part]], Iterable[tuple[int, Found]]]


def learn(
    samples: Sequence[Sample],
    secret: bytes,
    run: Runner = map,
    progress: Callable[[int, int], None] = lambda done, total: None,
    max_fields: int = MAX_FIELDS,
) -> Result:
    """Search the whole space for ``samples``.

    ``run`` maps the search over the space's parts (the builtin ``map``, or a process
    pool's, in any order); ``progress`` hears (parts done, parts in all) before the
    first part starts and as each one finishes.
    """
    facts = read_facts(samples)
    pool = atoms(samples)
    work = tasks(secret, pool)
    progress(0, len(work))
    results: dict[int, Found] = {}
    for index, found in run(_Searcher(samples, pool, facts, max_fields), list(enumerate(work))):
        results[index] = found
        progress(len(results), len(work))
    fits: list[Scheme] = []
    bases: dict[Scheme, str] = {}
    tried = 0
    # In the parts' own order, whatever order they finished in: the same answer each run.
    for index, task in enumerate(work):
        sequences, count = results[index]
        tried += count
        for fit in sequences:
            for sequence in widen(fit, pool):
                scheme = scheme_of(sequence, task, facts)
                fits.append(scheme)
                bases.setdefault(scheme, base_of(sequence))
    classes, differ = classify(list(dict.fromkeys(fits)), secret) if fits else ([], [])
    unseen = [
        name for name in (SESSION, CLIENT_IP) if not any(name in s.parts.headers for s in samples)
    ]
    return Result(classes, tried, facts, differ, unseen, bases)


@dataclass(frozen=True, slots=True)
class _Searcher:
    """``search`` with the samples bound: picklable, for a process pool's map."""

    samples: Sequence[Sample]
    pool: Sequence[Atom]
    facts: Facts
    max_fields: int

    def __call__(self, part: Part) -> tuple[int, Found]:
        index, task = part
        return index, search(task, self.samples, self.pool, self.facts, self.max_fields)


def explain_first(scheme: Scheme, samples: Sequence[Sample], base_path: str = "") -> list[str]:
    """The first sample's string to sign under ``scheme``, as ``sign --explain`` shows it."""
    sample = samples[0]
    context = Context(sample.auth.api_id, sample.auth.request_id, str(sample.auth.timestamp))
    return compile_scheme(scheme).explain(sample.parts._replace(base_path=base_path), context)
