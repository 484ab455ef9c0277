"""The Ollama TEMPLATE renders, under Go template semantics, what the chat template renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ExportError
from appliance.export import modelfile
from tests.helpers import gotemplate

# SmolLM2-Instruct's template: ChatML plus a default system prompt when there is none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'] + '\n<</SYS>>\n\n' }}{% else %}"
    "{{ ' ' + message['content'] + ' </s>' }}{% endif %}{% endfor %}"
)

SYSTEM_USER_ASSISTANT = [
    {"role": "system", "content": "You are a careful legal assistant."},
    {"role": "user", "content": "What is a lease?"},
    {"role": "assistant", "content": "A contract by which one party rents property."},
]


@pytest.fixture
def tokenizer(tiny_llama: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)


def ollama_render(translation: modelfile.Translation, messages: list[dict[str, str]]) -> str:
    """What Ollama sends to the model: the Modelfile SYSTEM goes first when none is given."""
    system = translation.layout.default_system
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return gotemplate.render(translation.template, data)


def test_chatml_system_user_assistant_renders_identically(tokenizer: Any) -> None:
    translation = modelfile.translate(tokenizer)
    # The conversation so far, the assistant's turn left open for Ollama to continue.
    expected = tokenizer.apply_chat_template(
        SYSTEM_USER_ASSISTANT, tokenize=False, continue_final_message=True
    )
    assert ollama_render(translation, SYSTEM_USER_ASSISTANT) == expected
    # A new user turn after it: the generation prompt is appended.
    follow_up = [*SYSTEM_USER_ASSISTANT, {"role": "user", "content": "And a deed?"}]
    expected = tokenizer.apply_chat_template(follow_up, tokenize=False, add_generation_prompt=True)
    assert ollama_render(translation, follow_up) == expected
    assert expected.endswith("<|im_start|>assistant\n")
    assert translation.stops == ["<|im_end|>", "<|im_start|>"]
    assert translation.layout.default_system is None


def test_default_system_prompt_becomes_system(tokenizer: Any) -> None:
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    translation = modelfile.translate(tokenizer)
    assert translation.layout.default_system == (
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    user_only = [{"role": "user", "content": "Hi"}]
    expected = tokenizer.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True)
    assert ollama_render(translation, user_only) == expected
    expected = tokenizer.apply_chat_template(
        SYSTEM_USER_ASSISTANT, tokenize=False, continue_final_message=True
    )
    assert ollama_render(translation, SYSTEM_USER_ASSISTANT) == expected
    text = modelfile.render_modelfile(
        "m.gguf", translation, modelfile.parameters({"temperature": 0.2}, 8192), "header"
    )
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text
    assert "PARAMETER temperature 0.2" in text
    assert "PARAMETER num_ctx 4096" in text
    assert text.startswith('# header\nFROM ./m.gguf\nTEMPLATE """{{ range')


def test_llama3_headers_translate_and_bos_is_left_to_the_runtime(tokenizer: Any) -> None:
    tokenizer.chat_template = LLAMA3_TEMPLATE
    translation = modelfile.translate(tokenizer)
    assert translation.layout.bos_dropped == tokenizer.bos_token
    expected = tokenizer.apply_chat_template(
        SYSTEM_USER_ASSISTANT, tokenize=False, continue_final_message=True
    )
    assert ollama_render(translation, SYSTEM_USER_ASSISTANT) == expected[len(tokenizer.bos_token) :]
    assert translation.stops[0] == "<|eot_id|>"


def test_untranslatable_template_is_refused_clearly(tokenizer: Any) -> None:
    tokenizer.chat_template = LLAMA2_TEMPLATE
    with pytest.raises(ExportError, match=r"cannot translate .* only role-tagged templates"):
        modelfile.translate(tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(ExportError, match="the model has no chat template"):
        modelfile.translate(tokenizer)
