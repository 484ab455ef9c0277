"""Token statistics of a dataset version against a base model's tokenizer and chat template.

Only the tokenizer is loaded (``local_files_only``, never remote code), and the rows stay in
memory. Every row is encoded by the training code itself (:mod:`appliance.training.encoding`):
the counts are exactly the lengths training will see, and the position of the first token the
loss is taken on tells which examples a ``max_seq_length`` would cut and which would lose their
answer entirely (training drops those).

This module loads a tokenizer (so transformers, and with it torch): it runs in the CLI and in
the ``token-stats`` job (:func:`token_stats_job`), never in the desktop process. The numbers it
produces (:class:`~appliance.datasets.token_stats.TokenStats`) and what a cut-off does to them
are in :mod:`appliance.datasets.token_stats`; their encrypted cache is
:mod:`appliance.datasets.token_cache`. Both import nothing heavy.

It lives in training, not in datasets, because what it measures is training's encoding of a row
against a registered model's tokenizer: the datasets layer stays below models and training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.datasets.canonical import Row, content, summary
from appliance.datasets.token_stats import TokenStats, truncation
from appliance.errors import DatasetError, NotFoundError, UsageError
from appliance.progress import Progress, no_progress
from appliance.training.encoding import Example, encode_chat, encode_text
from appliance.workspace import Workspace

if TYPE_CHECKING:
    from appliance.jobs.child import JobContext

DEFAULT_MAX_LENGTH = 2048


def tokenizer_folder(ws: Workspace, reg: Any, model: str) -> tuple[Path, str]:
    """The folder to load the tokenizer of ``model`` from, and how to name it in output.

    ``model`` is a base model name from the registry, or else the path of a Hugging Face
    model folder (for a model not imported yet).

    Raises:
        NotFoundError: neither a registered model nor a folder.
    """
    try:
        row = reg.models.get(model)
    except NotFoundError as exc:
        path = Path(model).expanduser()
        if path.is_dir():
            return path.absolute(), f"folder {path.absolute()}"
        raise NotFoundError(f"{exc}; or give the path of a model folder") from None
    from appliance.models.use import model_folder as folder_of

    return folder_of(ws, row), f"model {model}"


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer of the model in ``folder``, from local files only.

    Raises:
        DatasetError: the folder has no usable tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"cannot load the tokenizer from {folder} ({reason}); check that the model folder "
            "has its tokenizer files"
        ) from None


def _check_template(rows: Sequence[Row], tokenizer: Any) -> None:
    if any("messages" in r for r in rows) and not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "this model's tokenizer has no chat template, so chat examples cannot be measured "
            "(or trained); choose an instruct/chat model"
        )


def encode_row(tokenizer: Any, row: Row, loss_on: str = "assistant") -> Example:
    """One row (with or without its split) encoded exactly as training encodes it."""
    body = content(row)
    if "messages" in body:
        return encode_chat(tokenizer, body["messages"], loss_on)
    return encode_text(tokenizer, body["text"])


def token_counts(rows: Sequence[Row], tokenizer: Any) -> list[int]:
    """Tokens per example as training encodes it: chat rows through the chat template, text
    rows with their end-of-sequence token."""
    _check_template(rows, tokenizer)
    return [len(encode_row(tokenizer, r, "all").input_ids) for r in rows]


def token_stats(rows: Sequence[Row], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """min, median, p95 and max tokens per example, how many exceed ``max_length``, and how
    many would lose their answer entirely (the prompt alone fills ``max_length``)."""
    if max_length < 1:
        raise UsageError("--max-length must be a positive number of tokens")
    lengths, first, masking = measure(rows, tokenizer)
    stats = TokenStats("", "", "", "", lengths, first, "t" * len(lengths), masking)
    cut = truncation(stats, max_length)
    return {
        **summary(lengths),
        "total": sum(lengths),
        "max_length": max_length,
        "over_max_length": cut.truncated,
        "answer_lost": cut.answer_lost,
    }


def measure(
    rows: Sequence[Row], tokenizer: Any, progress: Progress | None = None
) -> tuple[list[int], list[int], str]:
    """Length and first learned position of every row, as training encodes it.

    Returns:
        ``(lengths, first_learned, masking)``: tokens per example; the position of the first
        token the loss is taken on with ``loss_on=assistant`` (see
        :attr:`~appliance.training.encoding.Example.first_learned`); and the masking measured:
        ``assistant``, or ``all`` for a tokenizer without offsets (which training can only
        train with ``loss_on=all`` either).
    """
    _check_template(rows, tokenizer)
    report = progress or no_progress
    masking = "assistant" if getattr(tokenizer, "is_fast", False) else "all"
    lengths: list[int] = []
    first: list[int] = []
    total = len(rows)
    for index, row in enumerate(rows):
        if index % 64 == 0:
            report(index, total, "tokenizing")
        example = encode_row(tokenizer, row, masking)
        lengths.append(len(example.input_ids))
        first.append(example.first_learned)
    report(total, total, "tokenizing")
    return lengths, first, masking


def token_stats_job(ctx: JobContext) -> dict[str, Any]:
    """The ``token-stats`` job: measure a version against a model and cache it, encrypted.

    Params: ``dataset`` (``name@version``) and ``model`` (a registry name). Keys: the data key
    of the version's object and the cache key (:data:`token_cache.CACHE_KEY_NAME`), never the
    master key. The result: ``dataset``, ``model``, ``examples`` and the summary of the lengths
    (min, median, p95, max, total); the lengths themselves go only into the encrypted cache,
    which the parent reads with :func:`token_cache.cached_token_stats`.
    """
    from appliance.datasets import canonical, token_cache
    from appliance.datasets.store import resolve, version_label
    from appliance.models.use import model_folder as folder_of

    ref, model = str(ctx.params.get("dataset", "")), str(ctx.params.get("model", ""))
    if not ref or not model:
        raise UsageError("the token-stats job needs the params 'dataset' and 'model'")
    with ctx.registry() as reg:
        version = resolve(reg, ref)
        model_row = reg.models.get(model)
    what = version_label(version)
    ctx.progress(0, 0, "decrypting")
    plaintext = ctx.keys.read(ctx.ws.home / version["path"], version["object_id"], what)
    token_cache.check_plaintext(version, plaintext)
    rows = canonical.decode(plaintext, what)
    del plaintext
    ctx.progress(0, 0, "loading tokenizer")
    tokenizer = load_tokenizer(folder_of(ctx.ws, model_row))
    lengths, first, masking = measure(rows, tokenizer, ctx.progress)
    stats = TokenStats(
        dataset=f"{version['name']}@{version['version']}",
        dataset_sha256=version["sha256"],
        model=model_row["name"],
        model_sha256=model_row["sha256"],
        lengths=lengths,
        first_learned=first,
        splits="".join(r["split"][0] for r in rows),
        masking=masking,
    )
    key = ctx.keys.key(token_cache.CACHE_KEY_NAME, "the token statistics cache")
    token_cache.write_cache(ctx.ws, version, model_row, key, stats)
    return {
        "dataset": stats.dataset,
        "model": stats.model,
        "examples": stats.examples,
        **stats.summary(),
    }
