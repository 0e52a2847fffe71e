"""Tiny random Hugging Face models (built from configs, never downloaded) for reference tests."""

import numpy as np

VOCAB = 99


def tiny(kind: str):
    """A seeded tiny PyTorch model of ``kind``: bert, bert_mlm, gpt2, llama_tied, llama_untied."""
    import torch
    import transformers

    torch.manual_seed(0)
    if kind.startswith("bert"):
        cfg = transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
        cls = transformers.BertForMaskedLM if kind == "bert_mlm" else transformers.BertModel
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        cls = transformers.GPT2LMHeadModel
    else:
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            tie_word_embeddings=kind == "llama_tied",
            rope_theta=500.0,
        )
        cls = transformers.LlamaForCausalLM
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    # random (not default-initialised) norms and biases so a mapping mistake cannot hide
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(batch=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, -4:] = 0  # right padding on the second row
    return ids, mask


def torch_outputs(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    logits = out.logits.numpy() if hasattr(out, "logits") else None
    return out.hidden_states[-1].numpy(), logits
