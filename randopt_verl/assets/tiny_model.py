"""A tiny Qwen2 causal LM with a locally trained byte-level BPE tokenizer and a ChatML template, built offline.

Tests and the CPU smoke recipe use it: no hub, about a second to build, the same code paths as a real model.
    python -m randopt_verl.assets.tiny_model OUT_DIR        # any CPU
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, vocab: int = 384, seed: int = 0) -> Path:
    """Write a tiny Qwen2 model + tokenizer to out_dir (deterministic for a given seed) and return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    rnd = random.Random(seed)
    corpus = []
    for _ in range(3000):
        a, b = rnd.randint(0, 99), rnd.randint(0, 99)
        corpus.append(f"What is {a} + {b}? Using {a} and {b} make {a + b}. Answer: {a} + {b} = {a + b} #### {a + b}")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        corpus,
        trainer=trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     additional_special_tokens=["<|im_start|>"])
    hf_tok.chat_template = CHAT_TEMPLATE
    cfg = Qwen2Config(
        vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 32), num_key_value_heads=1, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build_tiny_model(a.out_dir, hidden=a.hidden, layers=a.layers, seed=a.seed))


if __name__ == "__main__":
    main()
