"""The class tree's tokens are the ones Mistral writes: on Mistral's real v1 SentencePiece vocabulary
(tests/data/mistral_tokenizer.model.v1, from the mistral-common 1.13.1 wheel, Apache-2.0; sha256 dadfd56d...),
read by sentencepiece itself as the reference. No model: tokenisation is the point."""
import hashlib
import json
import re
from pathlib import Path

import pytest

import llava_split_worker as worker
from conftest import load, make_project
from llava_soccer import families, scores, synthetic
from llava_soccer.families import qwen2_5_vl
from llava_soccer.settings import SOCCERNET_CLASSES, partial_path

spm = pytest.importorskip("sentencepiece", reason="pip install sentencepiece (tests/requirements.txt)")
VOCAB = Path(__file__).parent / "data" / "mistral_tokenizer.model.v1"
PREFIXES = [scores.FORMAT_PREFIX, "[{'label': '", "{'label': 'Foul', 'team': 'home', 'confidence': 0.8, "
            "'frame': 3, 'details': 'a late tackle'}, {'label': '"]


@pytest.fixture(scope="module")
def mistral():
    """(sentencepiece's processor, the same vocabulary as a transformers tokenizer): its BPE merges are the
    vocabulary's own pieces split in two, ordered by the merged piece's rank (as transformers' converter)."""
    from transformers import LlamaTokenizer
    assert hashlib.sha256(VOCAB.read_bytes()).hexdigest().startswith("dadfd56d766715c6")
    sp = spm.SentencePieceProcessor(model_file=str(VOCAB))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = sorted(((piece[:k], piece[k:]) for piece, i in vocab.items() if not (sp.is_control(i) or sp.is_byte(i))
                     for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab),
                    key=lambda m: (vocab[m[0] + m[1]], vocab[m[0]], vocab[m[1]]))
    return sp, LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_prefix_space=True)


def test_the_tokenizer_is_mistrals(mistral):
    sp, tok = mistral
    texts = [p + c + after for p in PREFIXES for c in SOCCERNET_CLASSES for after in ("', 'team'", "'}", "'}]")]
    assert all(tok(t, add_special_tokens=False)["input_ids"] == sp.encode(t) for t in texts + [scores.NONE])
    goal = tok("{'label': 'Goal', 'team'", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(goal)[4:7] == ["Go", "al", "',"]  # the example
    ends = set(tok.convert_ids_to_tokens(list(scores.end_tokens(tok, "'"))))
    assert {"'", "',", "'}", "<0x27>"} <= ends and "▁'" not in ends and all("'" in e or e == "<0x27>" for e in ends)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_trees_path_is_the_path_mistral_writes(mistral, prefix):
    """For all 17 classes x what follows a label in the asked format (", 'team'" or "'}"), Mistral's own
    tokenisation of the whole text is the prefix's tokens, then the tree's branch for that class (its name,
    tokenised in context), then one of the end tokens the branch sums over, and a lone "'" is rare."""
    sp, tok = mistral
    lone = 0
    for name in SOCCERNET_CLASSES:
        branch = list(scores._continuation(tok, prefix, name))
        for after in ("', 'team'", "'}"):
            ids, base = sp.encode(prefix + name + after), sp.encode(prefix)
            assert ids[:len(base) + len(branch)] == base + branch, (name, after)
            assert ids[len(base) + len(branch)] in scores.end_tokens(tok, "'"), (name, after)
            lone += ids[len(base) + len(branch)] == sp.piece_to_id("'")
    assert lone < 17  # the old tree's last token: a path Mistral mostly does not take


def test_a_tokenizer_that_cannot_spell_the_classes_gives_no_class_scores(mistral):
    """Names that map to <unk> (a vocabulary without capitals): class scores refuse, in one line."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *"abcdefghijklmnopqrstuvwxyz{}:' ,-"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    lower = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    with pytest.raises(ValueError, match=r"cannot spell Penalty, Kick-off.*--class-scores no"):
        scores.tree_room(lower)
    assert scores.tree_room(lower, ()) > 0  # P("None") alone needs no class names
    assert scores.tree_room(mistral[1]) > 0


def word_level(checkpoint):
    """The checkpoint's tokenizer made word-level, one character a word, without capitals (each maps to <unk>; a
    vocabulary without one names "A"'s id so): every id keeps its place, the family's specials theirs."""
    path = checkpoint / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    capital = {"A": "<unk>"} if "<unk>" not in vocab else {}
    vocab = {capital.get(t) or (f"<unused{i}>" if len(t) == 1 and t.isupper() else t): i for t, i in vocab.items()}
    spec["model"] = {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    split = {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated", "invert": False}
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [p for p in (spec["pre_tokenizer"], split) if p]}
    path.write_text(json.dumps(spec))
    config = checkpoint / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": "PreTrainedTokenizerFast",
                                  "unk_token": "<unk>"}))
    return checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
def test_the_worker_refuses_class_scores_it_cannot_spell_in_one_line(tmp_path, video_25fps, family, capsys):
    """For every family: a checkpoint whose tokenizer cannot spell the class names stops the worker before its
    first window with one line and exit 1 (never 17 numbers of something else, nor a failed record per window);
    with --class-scores no the same checkpoint runs."""
    builder = qwen2_5_vl.build_checkpoint if family == "qwen2_5_vl" else synthetic.make_checkpoint
    ckpt = word_level(builder(tmp_path / "ckpt", "tiny"))
    project = make_project(tmp_path, {"v.mkv": video_25fps})
    args = ["--gpu-id", "3", "--num-workers", "4", "--video-index", "0", "--project", str(project),
            "--model", str(ckpt), "--quantization", "fp32", "--max-new-tokens", "2"]
    capsys.readouterr()
    assert worker.main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower() or "⚠️" in line]
    assert len(errors) == 1 and re.search(r"cannot spell .*Penalty.*--class-scores no", errors[0]), err
    tag = families.tag_of(str(ckpt))  # the family's file names (qwen2.5vl: partial_results_qwen2.5vl_...)
    assert not partial_path(project, 0, 3, tag).exists()
    assert worker.main(args + ["--class-scores", "no"]) == 0
    assert all(r["class_scores"] is None for r in load(partial_path(project, 0, 3, tag))["windows"])
