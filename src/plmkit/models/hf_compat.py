"""The one place that knows Hugging Face names: checkpoint keys and config.json fields.

plmkit's own modules use short names (`transformer.blocks.0.attn.qkv`); a `Rule` ties one
plmkit tensor to the HF tensor(s) it corresponds to. BERT/RoBERTa/ALBERT keep query, key and
value as three matrices where plmkit fuses them into one `qkv` projection (concatenated on the
output dimension). GPT-2 stores its linear layers as `Conv1D`, whose weight is the transpose of
`nn.Linear`'s, so those are transposed both ways. Tied output embeddings are not written; HF
re-ties them from `tie_word_embeddings`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor
import torch

from plmkit.config import ConfigError, ModelConfig, from_dict
from plmkit.heads import hf_class_suffixes

HF_FAMILIES = ("bert", "roberta", "albert", "electra", "gpt2")
PREFIX = {"bert": "bert", "roberta": "roberta", "albert": "albert", "electra": "electra", "gpt2": "transformer"}

_CLASS_SUFFIX = hf_class_suffixes()  # head -> "ForSequenceClassification", ... (plmkit.heads)
_CLASS_STEM = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra", "gpt2": "GPT2"}

_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "relu": "relu", "silu": "silu", "swish": "silu"}
_PROBLEM_TO_HF = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                  "regression": "regression"}

# HF keys that duplicate another tensor or are non-persistent buffers in older files.
_IGNORED_SUFFIXES = ("predictions.decoder.bias", "lm_head.decoder.bias", "embeddings.position_ids",
                     ".attn.bias", ".attn.masked_bias")


@dataclass(frozen=True)
class Rule:
    ours: str
    hf: tuple[str, ...]
    transpose: bool = False


def architecture(family: str, task: str) -> str:
    """HF class name for a plmkit (family, task), e.g. ("bert", "pretraining") -> BertForPreTraining."""
    if family == "roberta" and task == "pretraining":
        task = "masked-lm"  # RoBERTa pretrains with MLM alone
    return _CLASS_STEM[family] + _CLASS_SUFFIX[task]


def task_of(arch_name: str) -> str:
    """plmkit task of an HF class name (BertForMaskedLM -> masked-lm)."""
    for stem in _CLASS_STEM.values():
        if arch_name.startswith(stem):
            suffix = arch_name[len(stem):]
            for task, s in _CLASS_SUFFIX.items():
                if s == suffix:
                    return task
    raise ConfigError(f"unsupported architecture {arch_name!r}")


# --------------------------------------------------------------------------- key rules


def _pair(ours: str, hf: str, transpose: bool = False) -> list[Rule]:
    return [Rule(f"{ours}.{p}", (f"{hf}.{p}",), transpose and p == "weight") for p in ("weight", "bias")]


def _qkv(ours: str, hf_stem: str) -> list[Rule]:
    return [Rule(f"{ours}.{p}", tuple(f"{hf_stem}.{n}.{p}" for n in ("query", "key", "value"))) for p in ("weight", "bias")]


def _embedding_rules(cfg: ModelConfig, p: str) -> list[Rule]:
    e = f"{p}.embeddings"
    rules = [Rule("transformer.emb.tok.weight", (f"{e}.word_embeddings.weight",)),
             Rule("transformer.emb.pos.weight", (f"{e}.position_embeddings.weight",))]
    if cfg.type_vocab_size > 0:
        rules.append(Rule("transformer.emb.token_type.weight", (f"{e}.token_type_embeddings.weight",)))
    return rules + _pair("transformer.emb.norm", f"{e}.LayerNorm")


def _bert_backbone(cfg: ModelConfig, p: str) -> list[Rule]:
    rules = _embedding_rules(cfg, p)
    for i in range(cfg.num_layers):
        o, h = f"transformer.blocks.{i}", f"{p}.encoder.layer.{i}"
        rules += _qkv(f"{o}.attn.qkv", f"{h}.attention.self")
        rules += _pair(f"{o}.attn.proj", f"{h}.attention.output.dense")
        rules += _pair(f"{o}.ln_attn", f"{h}.attention.output.LayerNorm")
        rules += _pair(f"{o}.mlp.fc", f"{h}.intermediate.dense")
        rules += _pair(f"{o}.mlp.proj", f"{h}.output.dense")
        rules += _pair(f"{o}.ln_mlp", f"{h}.output.LayerNorm")
    return rules


def _electra_backbone(cfg: ModelConfig, p: str) -> list[Rule]:
    rules = _bert_backbone(cfg, p)
    if (cfg.embedding_size or cfg.hidden_size) != cfg.hidden_size:
        rules += _pair("transformer.emb.proj", f"{p}.embeddings_project")
    return rules


def _albert_backbone(cfg: ModelConfig, p: str) -> list[Rule]:
    rules = _embedding_rules(cfg, p) + _pair("transformer.emb.proj", f"{p}.encoder.embedding_hidden_mapping_in")
    for g in range(1 if cfg.share_layers else cfg.num_layers):
        o, h = f"transformer.blocks.{g}", f"{p}.encoder.albert_layer_groups.{g}.albert_layers.0"
        rules += _qkv(f"{o}.attn.qkv", f"{h}.attention")
        rules += _pair(f"{o}.attn.proj", f"{h}.attention.dense")
        rules += _pair(f"{o}.ln_attn", f"{h}.attention.LayerNorm")
        rules += _pair(f"{o}.mlp.fc", f"{h}.ffn")
        rules += _pair(f"{o}.mlp.proj", f"{h}.ffn_output")
        rules += _pair(f"{o}.ln_mlp", f"{h}.full_layer_layer_norm")
    return rules


def _gpt2_backbone(cfg: ModelConfig, p: str) -> list[Rule]:
    rules = [Rule("transformer.emb.tok.weight", (f"{p}.wte.weight",)),
             Rule("transformer.emb.pos.weight", (f"{p}.wpe.weight",))]
    for i in range(cfg.num_layers):
        o, h = f"transformer.blocks.{i}", f"{p}.h.{i}"
        rules += _pair(f"{o}.ln_attn", f"{h}.ln_1") + _pair(f"{o}.ln_mlp", f"{h}.ln_2")
        rules += _pair(f"{o}.attn.qkv", f"{h}.attn.c_attn", transpose=True)
        rules += _pair(f"{o}.attn.proj", f"{h}.attn.c_proj", transpose=True)
        rules += _pair(f"{o}.mlp.fc", f"{h}.mlp.c_fc", transpose=True)
        rules += _pair(f"{o}.mlp.proj", f"{h}.mlp.c_proj", transpose=True)
    return rules + _pair("transformer.norm_f", f"{p}.ln_f")


def _mlm_rules(family: str) -> list[Rule]:
    stem, dense, norm = {
        "bert": ("cls.predictions", "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"),
        "roberta": ("lm_head", "lm_head.dense", "lm_head.layer_norm"),
        "albert": ("predictions", "predictions.dense", "predictions.LayerNorm"),
    }[family]
    return (_pair("mlm.dense", dense) + _pair("mlm.norm", norm)
            + [Rule("mlm.bias", (f"{stem}.bias",)), Rule("mlm.decoder.weight", (f"{stem}.decoder.weight",))])


def _electra_head_rules(task: str) -> list[Rule]:
    """ELECTRA's discriminator (pretraining), generator (masked-lm) and task heads."""
    if task == "pretraining":
        return _pair("rtd.dense", "discriminator_predictions.dense") + _pair(
            "rtd.out", "discriminator_predictions.dense_prediction")
    if task == "masked-lm":
        return (_pair("mlm.dense", "generator_predictions.dense") + _pair("mlm.norm", "generator_predictions.LayerNorm")
                + _pair("mlm.decoder", "generator_lm_head")[:1] + [Rule("mlm.bias", ("generator_lm_head.bias",))])
    if task == "sequence-classification":
        return _pair("pooler.dense", "classifier.dense") + _pair("classifier", "classifier.out_proj")
    return {"token-classification": _pair("classifier", "classifier"),
            "question-answering": _pair("qa_outputs", "qa_outputs")}.get(task, [])


def _pooler_rules(family: str, task: str, p: str) -> list[Rule]:
    if family == "roberta" and task != "feature-extraction":
        return _pair("pooler.dense", "classifier.dense") if task == "sequence-classification" else []
    return _pair("pooler.dense", f"{p}.pooler" if family == "albert" else f"{p}.pooler.dense")


def _head_rules(family: str, task: str, p: str) -> list[Rule]:
    if family == "electra":
        return _electra_head_rules(task)
    if family == "gpt2":
        return {"causal-lm": [Rule("lm_head.weight", ("lm_head.weight",))],
                "sequence-classification": [Rule("score.weight", ("score.weight",))]}.get(task, [])
    if task == "pretraining":
        rules = _mlm_rules(family)
        if family != "roberta":
            nsp = "sop_classifier.classifier" if family == "albert" else "cls.seq_relationship"
            rules += _pooler_rules(family, task, p) + _pair("nsp", nsp)
        return rules
    if task == "masked-lm":
        return _mlm_rules(family)
    if task == "sequence-classification":
        out = "classifier.out_proj" if family == "roberta" else "classifier"
        return _pooler_rules(family, task, p) + _pair("classifier", out)
    if task == "token-classification":
        return _pair("classifier", "classifier")
    if task == "question-answering":
        return _pair("qa_outputs", "qa_outputs")
    if task == "feature-extraction":
        return _pooler_rules(family, task, p)
    return []


def rules_for(cfg: ModelConfig, task: str) -> list[Rule]:
    p = PREFIX[cfg.family]
    backbone = {"bert": _bert_backbone, "roberta": _bert_backbone, "albert": _albert_backbone,
                "electra": _electra_backbone, "gpt2": _gpt2_backbone}[cfg.family]
    return backbone(cfg, p) + _head_rules(cfg.family, task, p)


def to_hf_state(state: dict[str, Tensor], cfg: ModelConfig, task: str, skip: set[str]) -> dict[str, Tensor]:
    """plmkit state dict -> HF state dict; `skip` names tied plmkit tensors that are not written."""
    out: dict[str, Tensor] = {}
    for rule in rules_for(cfg, task):
        if rule.ours in skip or rule.ours not in state:
            continue
        t = state[rule.ours]
        t = t.t() if rule.transpose else t
        parts = t.chunk(len(rule.hf), dim=0) if len(rule.hf) > 1 else (t,)
        for name, part in zip(rule.hf, parts):
            out[name] = part.contiguous().clone()
    return out


def from_hf_state(hf: dict[str, Tensor], cfg: ModelConfig, task: str) -> tuple[dict[str, Tensor], list[str]]:
    """HF state dict -> (plmkit state dict, HF keys that no rule used)."""
    p = PREFIX[cfg.family]
    if not any(k.startswith(p + ".") for k in hf):  # a bare backbone (BertModel, GPT2Model) has no prefix
        hf = {(k if k.split(".")[0] in _HEAD_ROOTS else f"{p}.{k}"): v for k, v in hf.items()}
    used: set[str] = set()
    ours: dict[str, Tensor] = {}
    for rule in rules_for(cfg, task):
        if not all(k in hf for k in rule.hf):
            continue
        t = torch.cat([hf[k] for k in rule.hf], dim=0) if len(rule.hf) > 1 else hf[rule.hf[0]]
        ours[rule.ours] = t.t() if rule.transpose else t
        used.update(rule.hf)
    unused = [k for k in hf if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    return ours, unused


_HEAD_ROOTS = {"cls", "lm_head", "predictions", "sop_classifier", "classifier", "qa_outputs", "score",
               "discriminator_predictions", "generator_predictions", "generator_lm_head"}


# --------------------------------------------------------------------------- config.json


def config_to_hf(cfg: ModelConfig, task: str) -> dict[str, Any]:
    """config.json in HF's schema for cfg.family (plus a `plmkit` section with the full config)."""
    d: dict[str, Any] = {}
    if hf_representable(cfg):
        d["architectures"] = [architecture(cfg.family, task)]
        d["model_type"] = cfg.family
        d.update(_gpt2_fields(cfg) if cfg.family == "gpt2" else _encoder_fields(cfg))
        d.update(initializer_range=cfg.initializer_range, pad_token_id=cfg.pad_token_id,
                 bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                 tie_word_embeddings=cfg.tie_embeddings, problem_type=_PROBLEM_TO_HF[cfg.problem_type])
        if cfg.id2label is not None:
            d["id2label"] = {str(k): v for k, v in cfg.id2label.items()}
            d["label2id"] = cfg.label2id
        elif task in ("sequence-classification", "token-classification"):
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    else:
        d["model_type"] = f"plmkit-{cfg.family}"
    d["plmkit"] = {"task": task, "config": cfg.to_dict()}
    return d


def hf_representable(cfg: ModelConfig) -> bool:
    """Whether `transformers` computes the same function from this config's HF translation.

    A BERT with pre-norm or rotary positions has no HF equivalent: its config.json then gets a
    `plmkit-*` model_type, so `transformers` refuses it instead of silently computing another model.
    """
    if cfg.family not in HF_FAMILIES or cfg.position != "learned":
        return False
    return cfg.norm == ("pre" if cfg.family == "gpt2" else "post")


def _encoder_fields(cfg: ModelConfig) -> dict[str, Any]:
    d = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
             num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
             hidden_act=_ACT_TO_HF[cfg.activation], hidden_dropout_prob=cfg.dropout,
             attention_probs_dropout_prob=cfg.attention_dropout, max_position_embeddings=cfg.max_positions,
             type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
             classifier_dropout=cfg.classifier_dropout)
    if cfg.family in ("albert", "electra"):
        d["embedding_size"] = cfg.embedding_size or cfg.hidden_size
    if cfg.family == "albert":
        d.update(num_hidden_groups=1 if cfg.share_layers else cfg.num_layers, inner_group_num=1)
    return d


def _gpt2_fields(cfg: ModelConfig) -> dict[str, Any]:
    return dict(vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                n_inner=cfg.intermediate_size, activation_function=_ACT_TO_HF[cfg.activation],
                resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout,
                n_positions=cfg.max_positions, layer_norm_epsilon=cfg.layer_norm_eps)


def config_from_hf(d: Any, where: str = "config.json") -> tuple[ModelConfig, str]:
    """(ModelConfig, task) from a config.json written by plmkit or by `transformers`.

    Every value is checked before a model is built: a missing or mistyped field, or a size
    that cannot be right, is a ConfigError naming the field (the config.json name, and
    plmkit's where it differs).
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(d).__name__}")
    if "plmkit" in d:
        section = d["plmkit"]
        if not isinstance(section, dict) or not isinstance(section.get("config"), dict) \
                or not isinstance(section.get("task"), str):
            raise ConfigError(f"{where}: the plmkit section needs a 'config' object and a 'task' name")
        try:
            return from_dict(ModelConfig, section["config"], "model"), section["task"]
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    kind = d.get("model_type")
    if kind not in HF_FAMILIES:
        raise ConfigError(f"{where}: unsupported model_type {kind!r}; plmkit reads {', '.join(HF_FAMILIES)}")
    archs = d.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ConfigError(f"{where}: architectures must be a list of class names, got {archs!r}")
    task = task_of(archs[0]) if archs else ("causal-lm" if kind == "gpt2" else "feature-extraction")
    names: dict[str, str] = {}  # plmkit field -> config.json field, for messages
    fields = _gpt2_from_hf(d, names, where) if kind == "gpt2" else _encoder_from_hf(d, kind, names, where)
    problem = {v: k for k, v in _PROBLEM_TO_HF.items()}.get(str(d.get("problem_type") or ""), "single_label")
    fields.update(family=kind, initializer_range=d.get("initializer_range", 0.02),
                  bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
                  tie_embeddings=d.get("tie_word_embeddings", True), problem_type=problem)
    labels = d.get("id2label")
    if task in ("sequence-classification", "token-classification") and labels:
        if not isinstance(labels, dict) or not all(str(k).lstrip("-").isdigit() for k in labels):
            raise ConfigError(f"{where}: id2label must map class ids to names, got {labels!r}")
        fields["id2label"] = {int(k): v for k, v in labels.items()}
    try:
        return from_dict(ModelConfig, fields, "model"), task
    except ConfigError as e:
        message = re.sub(r"model\.(\w+)", lambda m: names.get(m.group(1), m.group(1)), str(e))
        raise ConfigError(f"{where}: {message}") from None


_REQUIRED = object()


def _get(d: dict[str, Any], key: str, names: dict[str, str], ours: str, where: str, default: Any = _REQUIRED) -> Any:
    """d[key] (or `default`), remembering that plmkit calls it `ours`; a missing required key is a ConfigError."""
    names[ours] = key if key == ours else f"{key} (model.{ours})"
    if key not in d or d[key] is None:
        if default is _REQUIRED:
            raise ConfigError(f"{where}: missing field {key}")
        return default
    return d[key]


def _activation(name: Any, key: str, where: str) -> str:
    if name not in _ACT_FROM_HF:
        raise ConfigError(f"{where}: {key} {name!r} is not supported; plmkit knows {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[name]


def _encoder_from_hf(d: dict[str, Any], kind: str, names: dict[str, str], where: str) -> dict[str, Any]:
    def get(key: str, ours: str, default: Any = _REQUIRED) -> Any:
        return _get(d, key, names, ours, where, default)

    pad = get("pad_token_id", "pad_token_id", 1 if kind == "roberta" else 0)
    fields = dict(arch="encoder", vocab_size=get("vocab_size", "vocab_size"), hidden_size=get("hidden_size", "hidden_size"),
                  num_layers=get("num_hidden_layers", "num_layers"), num_heads=get("num_attention_heads", "num_heads"),
                  intermediate_size=get("intermediate_size", "intermediate_size"),
                  activation=_activation(d.get("hidden_act", "gelu_new" if kind == "albert" else "gelu"),
                                         "hidden_act", where),
                  norm="post", max_positions=get("max_position_embeddings", "max_positions", 512),
                  type_vocab_size=get("type_vocab_size", "type_vocab_size", 2),
                  dropout=get("hidden_dropout_prob", "dropout", 0.1),
                  attention_dropout=get("attention_probs_dropout_prob", "attention_dropout", 0.1),
                  layer_norm_eps=get("layer_norm_eps", "layer_norm_eps", 1e-12), pad_token_id=pad,
                  classifier_dropout=d.get("classifier_dropout"))
    if kind == "roberta":
        if not isinstance(pad, int) or isinstance(pad, bool):
            raise ConfigError(f"{where}: pad_token_id: expected an integer, got {pad!r}")
        fields["position_offset"] = pad + 1
    if kind == "electra":
        fields["embedding_size"] = d.get("embedding_size", d["hidden_size"])
    if kind == "albert":
        groups, layers = d.get("num_hidden_groups", 1), fields["num_layers"]
        if groups not in (1, layers) or d.get("inner_group_num", 1) != 1:
            raise ConfigError("ALBERT with num_hidden_groups other than 1 or num_hidden_layers is not supported")
        fields.update(embedding_size=get("embedding_size", "embedding_size", 128), share_layers=groups == 1)
    return fields


def _gpt2_from_hf(d: dict[str, Any], names: dict[str, str], where: str) -> dict[str, Any]:
    def get(key: str, ours: str, default: Any = _REQUIRED) -> Any:
        return _get(d, key, names, ours, where, default)

    c = get("n_embd", "hidden_size")
    eos = d.get("eos_token_id", 50256)
    inner = get("n_inner", "intermediate_size", None)
    if inner is None:
        inner = 4 * c if isinstance(c, int) and not isinstance(c, bool) else c
    return dict(arch="decoder", vocab_size=get("vocab_size", "vocab_size"), hidden_size=c,
                num_layers=get("n_layer", "num_layers"), num_heads=get("n_head", "num_heads"),
                intermediate_size=inner,
                activation=_activation(d.get("activation_function", "gelu_new"), "activation_function", where),
                norm="pre", max_positions=get("n_positions", "max_positions", 1024), type_vocab_size=0,
                dropout=get("resid_pdrop", "dropout", 0.1), attention_dropout=get("attn_pdrop", "attention_dropout", 0.1),
                layer_norm_eps=get("layer_norm_epsilon", "layer_norm_eps", 1e-5),
                pad_token_id=d.get("pad_token_id") if d.get("pad_token_id") is not None else eos)
