"""Ollama ``Modelfile``: the chat template translated to a Go ``TEMPLATE``, stop tokens, defaults.

A Jinja chat template cannot be translated in general, so the translation works backwards from
what the template renders: it renders probe conversations with sentinel contents, reads off the
role-tagged layout ``PREFIX (HEADER_START role HEADER_END content MESSAGE_END)*`` (ChatML's
``<|im_start|>role\\n ... <|im_end|>\\n``, Llama 3's header tokens, and the like), including a
default system prompt the template inserts, then re-renders every probe from those parts and
accepts the translation only if each one is identical to the tokenizer's own rendering. Anything
else (templates that reformat content, insert dates, merge system into user turns...) is refused
with a message saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ExportError

SENTINELS = {"system": "SYSTEMxq7", "user": "USERxq7", "assistant": "ASSISTANTxq7"}
Message = dict[str, str]


@dataclass(frozen=True)
class RoleLayout:
    """The parts a role-tagged chat template puts around each message."""

    prefix: str
    """Text before the first message (often empty)."""
    header_start: str
    """Before the role name, e.g. ``<|im_start|>``."""
    header_end: str
    """After the role name, e.g. ``\\n``."""
    message_end: str
    """After the content, e.g. ``<|im_end|>\\n``."""
    default_system: str | None = None
    """The system prompt the template inserts when a conversation has none."""
    bos_dropped: str | None = None
    """The BOS token the template writes first, left out of ``prefix``: llama.cpp adds it."""

    def render(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        """What Ollama renders with :meth:`go_template` (the last assistant turn left open)."""
        if self.default_system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        out = [self.prefix]
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            out.append(f"{self.header_start}{m['role']}{self.header_end}{m['content']}")
            if m["role"] != "assistant" or not last:
                out.append(self.message_end)
            if last and m["role"] != "assistant" and add_generation_prompt:
                out.append(f"{self.header_start}assistant{self.header_end}")
        return "".join(out)

    def go_template(self) -> str:
        """The Ollama ``TEMPLATE`` (Go text/template over ``.Messages``).

        A final assistant message is left open, so Ollama continues it; otherwise the
        assistant header is appended for the reply. No ``{{-`` trimming: the literal newlines of
        the layout must survive.
        """
        a, b, e = self.header_start, self.header_end, self.message_end
        return (
            f"{self.prefix}{{{{ range $i, $_ := .Messages }}}}"
            "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f"{a}{{{{ .Role }}}}{b}{{{{ .Content }}}}"
            f'{{{{ if or (ne .Role "assistant") (not $last) }}}}{e}{{{{ end }}}}'
            f'{{{{ if and $last (ne .Role "assistant") }}}}{a}assistant{b}{{{{ end }}}}'
            "{{ end }}"
        )

    def stop_tokens(self, eos_token: str | None) -> list[str]:
        """Strings that end a reply: the message end, the next header, the EOS token."""
        stops: list[str] = []
        for s in (self.message_end.strip(), self.header_start.strip(), (eos_token or "").strip()):
            if s and s not in stops:
                stops.append(s)
        return stops


@dataclass
class Translation:
    """A chat template translated for Ollama."""

    layout: RoleLayout
    template: str
    stops: list[str] = field(default_factory=list)


def _hf_render(tokenizer: Any, messages: list[Message], **kwargs: Any) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    return str(text)


def probe_conversations() -> list[tuple[list[Message], bool]]:
    """Conversations both renderings must agree on: ``(messages, ends_with_generation_prompt)``."""
    s = {"role": "system", "content": "You answer briefly."}
    u1 = {"role": "user", "content": "What is a lease?"}
    a1 = {"role": "assistant", "content": "A contract to rent property."}
    u2 = {"role": "user", "content": "And a deed?\nTwo lines."}
    a2 = {"role": "assistant", "content": "A document that transfers title."}
    return [
        ([u1], True),
        ([s, u1], True),
        ([s, u1, a1], False),
        ([s, u1, a1, u2], True),
        ([u1, a1, u2, a2], False),
        ([s, u1, a1, u2, a2], False),
    ]


def _refuse(why: str) -> ExportError:
    return ExportError(
        f"cannot translate this model's chat template into an Ollama TEMPLATE ({why}); only "
        "role-tagged templates such as ChatML are translated: the GGUF file is fine, write the "
        "Modelfile's TEMPLATE by hand (see docs/serving.md)"
    )


def _layout(tokenizer: Any) -> RoleLayout:
    """Read the role-tagged parts off a rendering of system + user + assistant."""
    s, u, a = SENTINELS["system"], SENTINELS["user"], SENTINELS["assistant"]
    full = _hf_render(
        tokenizer,
        [
            {"role": "system", "content": s},
            {"role": "user", "content": u},
            {"role": "assistant", "content": a},
        ],
        add_generation_prompt=False,
    )
    if not (0 <= full.find(s) < full.find(u) < full.find(a)):
        raise _refuse("it does not render system, user and assistant messages in order")
    before_s = full[: full.find(s)]
    between_su = full[full.find(s) + len(s) : full.find(u)]
    between_ua = full[full.find(u) + len(u) : full.find(a)]
    message_end = full[full.find(a) + len(a) :]
    if "system" not in before_s or not between_su.startswith(message_end):
        raise _refuse("the roles are not tagged around each message")
    role_at = before_s.rfind("system")
    header_end = before_s[role_at + len("system") :]
    user_tag = "user" + header_end
    if not between_su.endswith(user_tag):
        raise _refuse("the user header differs from the system header")
    header_start = between_su[len(message_end) : len(between_su) - len(user_tag)]
    if between_ua != f"{message_end}{header_start}assistant{header_end}":
        raise _refuse("the assistant header differs from the others")
    if not before_s[:role_at].endswith(header_start):
        raise _refuse("the first header is not like the others")
    prefix = before_s[: role_at - len(header_start)]
    bos = getattr(tokenizer, "bos_token", None)
    dropped = None
    if bos and prefix == bos:
        prefix, dropped = "", bos  # llama.cpp adds BOS itself when the GGUF says so
    layout = RoleLayout(prefix, header_start, header_end, message_end, None, dropped)
    return _with_default_system(tokenizer, layout)


def _strip_bos(layout: RoleLayout, text: str) -> str:
    if layout.bos_dropped and text.startswith(layout.bos_dropped):
        return text[len(layout.bos_dropped) :]
    return text


def _with_default_system(tokenizer: Any, layout: RoleLayout) -> RoleLayout:
    """Detect a system prompt the template inserts when there is none (SmolLM2 does)."""
    u = SENTINELS["user"]
    rendered = _hf_render(tokenizer, [{"role": "user", "content": u}], add_generation_prompt=True)
    rendered = _strip_bos(layout, rendered)
    head = f"{layout.prefix}{layout.header_start}system{layout.header_end}"
    tail = f"{layout.message_end}{layout.header_start}user{layout.header_end}{u}"
    if rendered.startswith(head) and tail in rendered:
        default = rendered[len(head) : rendered.index(tail)]
        return RoleLayout(
            layout.prefix,
            layout.header_start,
            layout.header_end,
            layout.message_end,
            default,
            layout.bos_dropped,
        )
    return layout


def translate(tokenizer: Any) -> Translation:
    """Translate the tokenizer's chat template, proven identical on the probe conversations.

    Raises:
        ExportError: no chat template, or one that is not a role-tagged layout.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise _refuse("the model has no chat template")
    layout = _layout(tokenizer)
    for messages, generation in probe_conversations():
        if generation:
            expected = _hf_render(tokenizer, messages, add_generation_prompt=True)
        else:
            expected = _hf_render(tokenizer, messages, continue_final_message=True)
        expected = _strip_bos(layout, expected)
        got = layout.render(messages, add_generation_prompt=generation)
        if got != expected:
            roles = "+".join(m["role"] for m in messages)
            raise _refuse(f"a {roles} conversation renders differently")
    template = layout.go_template()
    for text in (template, layout.default_system or ""):
        if '"""' in text or text.count("{{") != text.count("}}"):
            raise _refuse("its text cannot be quoted in a Modelfile")
    if layout.default_system and "{{" in layout.default_system:
        raise _refuse("its default system prompt contains template braces")
    return Translation(layout, template, layout.stop_tokens(getattr(tokenizer, "eos_token", None)))


def parameters(generation_config: dict[str, Any], context_length: int | None) -> dict[str, Any]:
    """Default sampling parameters: the model's generation config where it has them."""
    params: dict[str, Any] = {
        "temperature": float(generation_config.get("temperature") or 0.7),
        "top_p": float(generation_config.get("top_p") or 0.9),
    }
    if generation_config.get("top_k"):
        params["top_k"] = int(generation_config["top_k"])
    if generation_config.get("repetition_penalty"):
        params["repeat_penalty"] = float(generation_config["repetition_penalty"])
    params["num_ctx"] = min(int(context_length or 4096), 4096)
    return params


def render_modelfile(
    gguf_name: str, translation: Translation, params: dict[str, Any], header: str
) -> str:
    """The Modelfile text (``ollama create NAME -f Modelfile`` in the export folder)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"FROM ./{gguf_name}", f'TEMPLATE """{translation.template}"""']
    if translation.layout.default_system:
        lines.append(f'SYSTEM """{translation.layout.default_system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in translation.stops]
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"
