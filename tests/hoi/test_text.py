"""RmLR text knowledge: sentence templates, vocabulary hashing, the on-disk cache and the MiniLM encoder."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from tenfold.hoi.text import (
    HOIVocabulary,
    SentenceTransformerEncoder,
    TextEncoder,
    build_text_knowledge,
    gerund,
    hoi_sentence,
)

VOCAB = HOIVocabulary.from_lists(
    ["ride", "hold", "no_interaction", "hop_on", "sit_on"],
    ["person", "horse", "umbrella", "sports_ball"],
    [(0, 1), (1, 2), (2, 1), (3, 1), (1, 3), (4, 1)],
)


class StubEncoder:
    """Deterministic encoder: each text's embedding is seeded by its SHA-256; counts calls."""

    name = "stub/v1"

    def __init__(self, dim: int = 8) -> None:
        self.dim, self.calls = dim, 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        rows = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=-1)


@pytest.mark.parametrize(
    ("verb", "expected"),
    [("ride", "riding"), ("hold", "holding"), ("sit_on", "sitting on"), ("hop_on", "hopping on"),
     ("lie_on", "lying on"), ("see", "seeing"), ("blow", "blowing"), ("riding", "riding"),
     ("cut_with", "cutting with"), ("eat", "eating")],
)  # fmt: skip
def test_gerund(verb, expected):
    assert gerund(verb) == expected


def test_sentences_and_words():
    assert VOCAB.sentences == [
        "a photo of a person riding a horse",
        "a photo of a person holding an umbrella",
        "a photo of a person and a horse",
        "a photo of a person hopping on a horse",
        "a photo of a person holding a sports ball",
        "a photo of a person sitting on a horse",
    ]
    assert VOCAB.verb_phrases == ["riding", "holding", "no interaction", "hopping on", "sitting on"]
    assert VOCAB.object_words == ["person", "horse", "umbrella", "sports ball"]
    assert hoi_sentence("ride", "elephant", "{verb} {article} {object}") == "riding an elephant"


def test_vocabulary_rejects_bad_index():
    with pytest.raises(ValueError, match=r"hois\[1\] = \(0, 9\) is out of range"):
        HOIVocabulary.from_lists(["ride"], ["horse"], [(0, 0), (0, 9)])


def test_sha_depends_on_texts_and_template():
    other = HOIVocabulary.from_lists(VOCAB.verbs, VOCAB.objects, VOCAB.hois, template="{verb} {article} {object}")
    assert VOCAB.sha256() != other.sha256()
    assert VOCAB.sha256() == HOIVocabulary.from_lists(list(VOCAB.verbs), list(VOCAB.objects), VOCAB.hois).sha256()


def test_build_and_cache(tmp_path):
    enc = StubEncoder()
    assert isinstance(enc, TextEncoder)
    tk = build_text_knowledge(enc, VOCAB, tmp_path)
    assert enc.calls == 3
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("text-stub_v1-") and files[0].suffix == ".pt"
    torch.testing.assert_close(tk.sentences, enc.encode(VOCAB.sentences))
    torch.testing.assert_close(tk.objects[3], enc.encode(["sports ball"])[0])
    assert tk.hoi_verb.tolist() == [0, 1, 2, 3, 1, 4] and tk.hoi_object.tolist() == [1, 2, 1, 1, 3, 1]
    calls = enc.calls
    again = build_text_knowledge(enc, VOCAB, tmp_path)  # served from the cache
    assert enc.calls == calls
    assert torch.equal(again.sentences, tk.sentences) and torch.equal(again.verbs, tk.verbs)
    other = HOIVocabulary.from_lists(VOCAB.verbs, VOCAB.objects, VOCAB.hois[:3])
    build_text_knowledge(enc, other, tmp_path)
    assert enc.calls == calls + 3 and len(list(tmp_path.iterdir())) == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_cache_mismatch_and_bad_encoder(tmp_path):
    enc = StubEncoder()
    build_text_knowledge(enc, VOCAB, tmp_path)
    path = next(tmp_path.iterdir())
    data = torch.load(path, weights_only=True)
    torch.save({**data, "sha256": "0" * 64}, path)
    with pytest.raises(ValueError, match="cached for another vocabulary"):
        build_text_knowledge(enc, VOCAB, tmp_path)

    class Short(StubEncoder):
        name = "short"

        def encode(self, texts):
            return super().encode(texts)[:-1]

    with pytest.raises(ValueError, match=r"encoder 'short' returned \(5, 8\) for 6 sentences"):
        build_text_knowledge(Short(), VOCAB, None)


def test_minilm_encoder_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = SentenceTransformerEncoder()
    assert enc.name == "all-MiniLM-L6-v2"
    e = enc.encode(["a photo of a person riding a horse", "a photo of a person riding an elephant", "a red car"])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert e[0] @ e[1] > e[0] @ e[2]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceTransformerEncoder(tmp_path / "missing")


class _FakeOpenCLIP:
    """Stands in for the open_clip package: a 'text tower' that embeds the token counts."""

    def __init__(self):
        self.created = []

    def create_model(self, model_name, pretrained=None, device="cpu"):
        self.created.append((model_name, pretrained, device))

        class Tower(torch.nn.Module):
            def encode_text(self, tokens):
                return torch.stack([tokens.float().sum(1), tokens.float()[:, 0] + 1.0, torch.ones(len(tokens))], 1)

        return Tower()

    def get_tokenizer(self, model_name):
        return lambda texts: torch.tensor([[len(t), t.count(" ")] for t in texts])


def test_openclip_encoder_loads_local_weights_and_normalises(tmp_path, monkeypatch):
    import sys

    from tenfold.hoi.text import OpenCLIPEncoder

    fake = _FakeOpenCLIP()
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    weights = tmp_path / "ViT-B-32.pt"
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        OpenCLIPEncoder("ViT-B-32", weights)
    weights.write_bytes(b"x")
    enc = OpenCLIPEncoder("ViT-B-32", weights, batch_size=2)
    assert fake.created == [("ViT-B-32", str(weights), "cpu")] and enc.name == "openclip-ViT-B-32-ViT-B-32"
    texts = ["a b", "ccc", "d e f"]
    emb = enc.encode(texts)
    raw = torch.tensor([[len(t) + t.count(" "), len(t) + 1.0, 1.0] for t in texts])
    torch.testing.assert_close(emb, raw / raw.norm(dim=1, keepdim=True))  # batched over 2 + 1 texts, then L2-normed
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r"tenfold\[clip\]"):
        OpenCLIPEncoder("ViT-B-32", weights)


def test_task_text_encoder_names(tmp_path):
    from tenfold.hoi.task import _text_encoder

    enc = _text_encoder(f"openclip:ViT-B-32:{tmp_path / 'clip_b32.pt'}")
    assert enc.name == "openclip-ViT-B-32-clip_b32"  # built lazily: nothing is loaded until a text misses the cache
    assert _text_encoder("random-8").name == "random-8"
    with pytest.raises(ValueError, match="openclip:<model name>"):
        _text_encoder("clip")
