"""Tokenizer, Gutenberg stripping, split, blocks and the resumable sampler; the model's causality."""
import pytest
import torch

from cvkd.lm import (
    GPT,
    BlockSampler,
    CharTokenizer,
    DataError,
    GPTConfig,
    TextData,
    fixed_blocks,
    read_corpus,
)


def test_tokenizer_roundtrip_and_unknown_chars():
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("low hell")) == "low hell"
    with pytest.raises(DataError, match="not in the tokenizer"):
        tok.encode("hello!")


def test_gutenberg_header_footer_stripped(tmp_path):
    (tmp_path / "a.txt").write_text("licence blah\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nTo be.\n"
                                    "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence\n")
    (tmp_path / "b.txt").write_text("Or not.\n")
    text = read_corpus(tmp_path)
    assert "licence" not in text and "START OF" not in text
    assert "To be." in text and "Or not." in text
    with pytest.raises(DataError, match="not found"):
        read_corpus(tmp_path / "missing.txt")


def test_fixed_blocks_cover_every_prediction_once_and_pad():
    ids = torch.arange(11)
    x, y, mask = fixed_blocks(ids, 4)  # 10 predictions -> 3 blocks, the last one half padding
    assert x.shape == (3, 4) and int(mask.sum()) == 10
    assert torch.equal(y[mask], ids[1:]) and torch.equal(x[mask], ids[:-1])


def test_split_and_sampler_resume():
    text = "abcdefghij" * 30
    data = TextData(text, CharTokenizer.from_text(text), 0.1, 8)
    assert data.train_ids.numel() == 270 and data.val_ids.numel() == 30
    for mode in ("random", "fixed"):
        s1 = BlockSampler(data, 4, mode, seed=3)
        batches = [s1.next() for _ in range(12)]
        assert batches[0]["x"].shape == (4, 8)
        s2 = BlockSampler(data, 4, mode, seed=3)
        for _ in range(5):
            s2.next()
        s3 = BlockSampler(data, 4, mode, seed=3)
        s3.load_state_dict(s2.state_dict())
        for b in batches[5:]:
            assert torch.equal(s3.next()["x"], b["x"])
        assert torch.equal(batches[0]["y"][:, :-1], batches[0]["x"][:, 1:])
    vb = list(data.val_batches(2))
    assert sum(int(m.sum()) for _, _, m in vb) == 29


def test_model_is_causal_and_tied():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=7, n_layer=2, n_head=2, n_embd=8, block_size=6)).eval()
    x = torch.randint(0, 7, (1, 6))
    x2 = x.clone()
    x2[0, 4:] = (x2[0, 4:] + 1) % 7
    torch.testing.assert_close(m(x)[:, :4], m(x2)[:, :4])  # changing later tokens leaves earlier logits alone
    assert m.head.weight is m.wte.weight
    out = m.generate(x[:, :2], 5, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 7)
