"""A 4-layer Gemma 3 with random weights and a word-level tokenizer over ``WORDS``: the real
transformers code paths (the lm reward model, a tune from a model folder) in seconds."""
from pathlib import Path

WORDS = ("the a of to zebra walrus model user query title reward pool python language typing "
         "async await module import class function data type hint runtime error").split()


def make_tiny_model(folder: Path) -> Path:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    # "abcdef": transformers' stop strings read each token's text after that word
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "\n", ":", " ", "abcdef", *WORDS])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[ :\n]"), behavior="isolated")
    raw.decoder = decoders.Fuse()         # the pieces, spaces included, joined back
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>", add_bos_token=True)
    tokenizer.save_pretrained(folder)
    config = Gemma3TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"] * 2, pad_token_id=0,
                              eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    return folder
