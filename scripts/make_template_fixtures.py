#!/usr/bin/env python3
"""Regenerate fixtures/chat_templates: chat template parity cases rendered by transformers.

Every case is rendered with transformers' own `PreTrainedTokenizerFast.apply_chat_template(
..., tokenize=False)` on a model directory laid out exactly as the Rust loader reads it, so
the Rust test `crates/text/tests/chat_template_parity.rs` can demand byte-identical output
(or the same `raise_exception` message).

The script also builds a tiny byte-level BPE tokenizer (shared by every template directory,
since transformers needs one to load) and records encode/decode results for it.

Usage (versions pinned in scripts/requirements-templates.txt):
    python3 -m venv .venv-templates
    .venv-templates/bin/pip install -r scripts/requirements-templates.txt
    .venv-templates/bin/python scripts/make_template_fixtures.py
"""

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import jinja2
import tokenizers
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "chat_templates"
SOURCES = OUT / "sources"
MODELS = OUT / "models"
QWEN3_TEMPLATE = ROOT / "scripts" / "fixture_chat_template.jinja"

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<s>", "</s>", "<unk>", "<mask>",
    "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
]
# Like Qwen3: markup tokens that are added to the vocabulary but not "special", so
# decode(skip_special_tokens=True) keeps them.
ADDED_NOT_SPECIAL = ["<think>", "</think>", "<tool_call>", "</tool_call>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "Café, naïve, résumé, crème brûlée, Straße, Ångström.",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "こんにちは世界。日本語のテキストです。",
    "Привет, мир! Как дела?",
    "Emoji: 😀 😃 🎉 🚀 👍🏽 ❤️ 🇫🇷",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "The temperature in Paris is 21 degrees celsius.",
]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS * 8, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_NOT_SPECIAL])
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


TOKENIZER_TEXTS = [
    "Hello world!",
    "Café naïve 你好 😀🎉 👍🏽",
    "<|im_start|>user\nHi there<|im_end|>\n<think>\nhmm\n</think>\n\n",
    "  leading and   repeated   spaces\tand\ttabs\n\n",
    "Zürich – “quotes” … ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "",
]


def tokenizer_cases(tok: Tokenizer) -> list:
    cases = []
    for text in TOKENIZER_TEXTS:
        plain = tok.encode(text, add_special_tokens=False).ids
        with_special = tok.encode(text, add_special_tokens=True).ids
        cases.append({
            "text": text,
            "ids": plain,
            "ids_with_special": with_special,
            "decoded_keep_special": tok.decode(with_special, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
        })
    return cases


def added_token(content: str) -> dict:
    """The object form some tokenizer_config.json files use for special tokens."""
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}


def source(name: str) -> str:
    return (SOURCES / f"{name}.jinja").read_text(encoding="utf-8")


def model_dirs() -> dict:
    """Each entry: tokenizer_config.json contents plus template files, by relative path."""
    dirs = {
        "llama3_style": {
            "config": {"bos_token": "<|begin_of_text|>", "eos_token": added_token("<|eot_id|>"),
                       "chat_template": source("llama3_style")},
            "files": {},
        },
        "mistral_style": {
            "config": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                       "chat_template": [
                           {"name": "default", "template": source("mistral_default")},
                           {"name": "tool_use", "template": source("mistral_tool_use")},
                       ]},
            "files": {},
        },
        # The same templates in the file layout: chat_template.jinja plus
        # additional_chat_templates/<name>.jinja.
        "mistral_style_files": {
            "config": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
            "files": {"chat_template.jinja": source("mistral_default"),
                      "additional_chat_templates/tool_use.jinja": source("mistral_tool_use")},
        },
        # chat_template.jinja must win over the config's inline template.
        "whitespace_plain": {
            "config": {"eos_token": "</s>", "chat_template": "this inline template must be ignored"},
            "files": {"chat_template.jinja": source("whitespace_plain")},
        },
        "tojson_edge": {"config": {"eos_token": "</s>"},
                        "files": {"chat_template.jinja": source("tojson_edge")}},
        # Inline, with CRLF line endings: jinja2 normalizes every newline to "\n".
        "python_values": {
            "config": {"bos_token": "<s>", "eos_token": added_token("</s>"), "pad_token": None,
                       "unk_token": "<unk>", "mask_token": "<mask>",
                       "chat_template": source("python_values").replace("\n", "\r\n")},
            "files": {},
        },
        "generation_tag": {"config": {"eos_token": "<|im_end|>"},
                           "files": {"chat_template.jinja": source("generation_tag")}},
    }
    if QWEN3_TEMPLATE.exists():
        dirs["qwen3_fixture"] = {
            "config": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            "files": {"chat_template.jinja": QWEN3_TEMPLATE.read_text(encoding="utf-8")},
        }
    else:
        print(f"note: {QWEN3_TEMPLATE.relative_to(ROOT)} is absent; qwen3_fixture cases skipped",
              file=sys.stderr)
    return dirs


def write_model_dir(name: str, spec: dict) -> None:
    path = MODELS / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **spec["config"]}
    (path / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for rel, text in spec["files"].items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        # newline="" keeps the text byte-exact on every platform.
        with open(path / rel, "w", encoding="utf-8", newline="") as f:
            f.write(text)


# --------------------------------------------------------------------------------------
# Conversations

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Units: <celsius> & 'fahrenheit'.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
        "return": {"type": "number"},
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"]},
    },
}

SYS_USER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
MULTI_TURN = [
    {"role": "system", "content": "  You are terse.  "},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"},
    {"role": "user", "content": "Tell me a joke about café owners. 😀"},
    {"role": "assistant", "content": "Why did the barista quit? He couldn't espresso himself."},
    {"role": "user", "content": "Another one."},
]


def qwen_tool_conversation(string_args: bool) -> list:
    args = {"city": "Paris", "unit": "celsius"}
    return [
        {"role": "system", "content": "You can check the weather."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {
                "name": "get_weather",
                "arguments": json.dumps(args) if string_args else args}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "second result"},
        {"role": "assistant", "content": "It is 21 °C in Paris.",
         "reasoning_content": "The tool said 21."},
        {"role": "user", "content": "Thanks"},
    ]


def cases(dirs: dict) -> list:
    out = []

    def add(name, model, messages, tools=None, documents=None, agp=False, template=None, **extra):
        if model in dirs:
            out.append({"name": name, "model_dir": model, "template_name": template,
                        "messages": messages, "tools": tools, "documents": documents,
                        "add_generation_prompt": agp, "extra": extra})

    q = "qwen3_fixture"
    add("qwen3_system_user_gen", q, SYS_USER, agp=True)
    add("qwen3_system_user_nogen", q, SYS_USER, agp=False)
    add("qwen3_multi_turn", q, MULTI_TURN, agp=True)
    add("qwen3_tools_dict_args", q, qwen_tool_conversation(False), tools=[WEATHER_TOOL, SEARCH_TOOL], agp=True)
    add("qwen3_tools_string_args", q, qwen_tool_conversation(True), tools=[WEATHER_TOOL], agp=False)
    add("qwen3_reasoning_after_query", q, [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "  Simple: 4.  "},
    ])
    add("qwen3_enable_thinking_false", q, SYS_USER, agp=True, enable_thinking=False)
    add("qwen3_enable_thinking_true", q, SYS_USER, agp=True, enable_thinking=True)
    add("qwen3_raise_system_not_first", q, [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "late"}])
    add("qwen3_raise_unknown_role", q, [{"role": "narrator", "content": "Once upon a time"}])

    ll = "llama3_style"
    add("llama3_system_user", ll, SYS_USER, agp=True, date_string="26 Jul 2024")
    add("llama3_multi_turn_no_system", ll, MULTI_TURN[1:], agp=False, date_string="01 Jan 2025")
    llama_tools = [
        {"role": "system", "content": "Use tools when needed."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}]},
        {"role": "tool", "content": "21 <degrees> & 'sunny'"},
    ]
    add("llama3_tools_in_user", ll, llama_tools, tools=[WEATHER_TOOL], agp=True, date_string="26 Jul 2024")
    add("llama3_tools_in_system", ll, llama_tools, tools=[WEATHER_TOOL, SEARCH_TOOL], agp=True,
        date_string="26 Jul 2024", tools_in_user_message=False)
    add("llama3_raise_two_tool_calls", ll, [
        {"role": "user", "content": "both"},
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "a", "arguments": {}}},
            {"type": "function", "function": {"name": "b", "arguments": {}}}]},
    ], date_string="26 Jul 2024")

    for m in ("mistral_style", "mistral_style_files"):
        add(f"{m}_alternating", m, MULTI_TURN[:5], agp=False)
        add(f"{m}_raise_not_alternating", m, [
            {"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
        add(f"{m}_tools_select_tool_use", m, [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [{"id": "abc123XYZ", "type": "function", "function": {
                "name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "tool_call_id": "abc123XYZ", "content": {"temperature": 21.5, "ok": True,
                                                                      "note": "it's <warm>"}},
            {"role": "assistant", "content": "  21.5 degrees.  "},
            {"role": "user", "content": "And tomorrow?"},
        ], tools=[WEATHER_TOOL])
    add("mistral_style_named_tool_use", "mistral_style", SYS_USER, template="tool_use")
    add("mistral_style_raise_bad_tool_id", "mistral_style", [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "short", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
    ], tools=[WEATHER_TOOL])

    ws = "whitespace_plain"
    ws_conv = [
        {"role": "system", "content": "Sys prompt."},
        {"role": "user", "content": "Question one?"},
        {"role": "assistant", "content": "Answer one."},
        {"role": "user", "content": "Question two?"},
        {"role": "assistant", "content": "Answer two."},
    ]
    add("whitespace_gen", ws, ws_conv[:4], agp=True)
    add("whitespace_nogen", ws, ws_conv, agp=False)

    tj = "tojson_edge"
    add("tojson_edge_cases", tj, [
        {"role": "user", "content": "<b>bold</b> & 'single' \"double\" back\\slash\n\ttab \u0001 \u007f é 中文 😀 \u2028 end"},
        {"role": "assistant", "content": "nested", "meta": {
            "zeta": 1, "alpha": {"b": [1, 2, {"c": None}], "a": "ü"},
            "numbers": [1.0, 0.1, 1e-7, 1.5e300, -0.0, 100, -5, 1e16, 123456789.125, 18446744073709551615],
            "flags": [True, False, None], "empty": {}, "list": [], "Ωmega": "<&>'"}},
    ], tools=[WEATHER_TOOL])

    pv = "python_values"
    add("python_values_reprs", pv, [
        {"role": "user", "content": "plain text", "flag": True},
        {"role": "assistant", "content": {"a": 1, "b": [1.5, None, False], "s": "it's \"q\"\n", "u": "é\u00a0x"},
         "flag": None},
        {"role": "tool", "content": ["x", 2, {"k": "v"}], "flag": False},
    ], agp=True, enable_thinking=True)
    add("python_values_documents", pv, [{"role": "user", "content": "Summarize."}],
        documents=[{"title": "Doc A", "text": "Alpha."}, {"title": "Doc B", "text": "Beta."}],
        eos_token="<override>")

    gt = "generation_tag"
    add("generation_tag_gen", gt, ws_conv[1:4], agp=True)
    add("generation_tag_nogen", gt, ws_conv[1:], agp=False)
    return out


# --------------------------------------------------------------------------------------
# Snippets: small templates over one fixed context, one jinja2 feature each, rendered with
# transformers' `render_jinja_template` (what apply_chat_template calls).

SNIPPET_CONTEXT = {
    "messages": [
        {"role": "system", "content": " Sys "},
        {"role": "user", "content": "Hello, World"},
        {"role": "assistant", "content": "Hi <b>there</b> & 'you'"},
    ],
    "extra": {"d": {"b": 2, "a": 1}, "flag": True, "n": 7, "f": 2.5, "s": "abc", "empty": "",
              "nested": {"list": [1, "two", None], "t": False}},
}

SNIPPETS = [
    # printing values
    "{{ 1.0 }}|{{ 3 / 1 }}|{{ 7 / 2 }}|{{ 7 // 2 }}|{{ 7 % 3 }}|{{ 2 ** 10 }}|{{ -0.0 }}|{{ 1e20 }}|{{ 0.1 + 0.2 }}",
    "{{ flag }}|{{ none }}|{{ d }}|{{ nested }}|{{ [1, 'a', none] }}|{{ f }}",
    "{{ nested.list }}|{{ nested['t'] }}|{{ messages[0] }}",
    "{{ 'a' ~ 'b' }}|{{ 'n=' ~ n }}|{{ s ~ f }}",
    "{{ 'x' ~ flag }}|{{ 'x' ~ none }}|{{ 'x' ~ d }}",
    "{{ 'a' + 'b' }}|{{ [1, 2] + [3] }}|{{ 'ab' * 3 }}|{{ n + f }}",
    # strings and Python methods
    "{{ messages[0].content.strip() }}|{{ messages[0].content | trim }}|{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}.",
    "{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a\nb\n'.splitlines() }}",
    "{{ s.upper() }}|{{ 'ABC'.lower() }}|{{ 'hello world'.title() }}|{{ 'hello'.capitalize() }}|{{ s.replace('b', 'X') }}",
    "{{ s.startswith('a') }}|{{ s.endswith('bc') }}|{{ s.startswith(('x', 'a')) }}|{{ s.find('c') }}|{{ s.count('b') }}",
    "{{ s[1:] }}|{{ s[:-1] }}|{{ s[::-1] }}|{{ s[0] }}|{{ s[-1] }}|{{ messages[-1].content[:5] }}",
    "{{ s | upper }}|{{ 'Hello' | lower }}|{{ 'a b' | title }}|{{ 'abc' | capitalize }}|{{ s | replace('a', 'z') }}|{{ s | length }}|{{ 'é😀' | length }}",
    "{{ '%s-%d' | format('a', 3) }}|{{ '%.2f' | format(3.14159) }}|{{ s | reverse }}|{{ 'a' in s }}|{{ 'z' not in s }}",
    r"""{{ 'tab\there' }}|{{ "dq'sq" }}|{{ 'caf\u00e9' }}|{{ '\\' }}|{{ "a\nb" }}|{{ 'it\'s' }}""",
    # lists, dicts, filters
    "{{ messages | length }}|{{ messages | map(attribute='role') | join(', ') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
    "{{ messages | rejectattr('role', 'eq', 'system') | map(attribute='role') | list }}|{{ messages | first }}",
    "{{ [3, 1, 2] | sort }}|{{ [1, 2, 3] | sum }}|{{ [1, 5, 3] | max }}|{{ [4, 2] | min }}|{{ [1, 1, 2] | unique | list }}|{{ [1, 2, 3] | reverse | list }}",
    "{{ [1, 2] | last }}|{{ ['a', 'b'] | join }}|{{ [1, 2] | join('-') }}|{{ [true, none] | join(',') }}",
    "{{ d | items | list }}|{{ d | dictsort }}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.items() | list }}",
    "{{ d.get('a') }}|{{ d.get('zz') }}|{{ d.get('zz', 'dflt') }}|{{ 'a' in d }}|{{ d['b'] }}|{{ d.a }}",
    "{{ range(3) | list }}|{% for i in range(2, 8, 2) %}{{ i }}{% endfor %}|{{ dict(x=1, y='z') }}",
    "{{ 3.7 | int }}|{{ '3' | int + 1 }}|{{ 3 | float }}|{{ 3 | string }}|{{ none | string }}|{{ flag | string }}|{{ 2.50 | round }}",
    "{{ missing | default('dflt') }}|{{ none | default('dflt') }}|{{ empty | default('dflt', true) }}|{{ missing | length }}",
    # tests
    "{{ n is number }}|{{ f is number }}|{{ flag is number }}|{{ n is integer }}|{{ f is float }}|{{ flag is boolean }}|{{ s is string }}",
    "{{ d is mapping }}|{{ messages is sequence }}|{{ s is sequence }}|{{ d is sequence }}|{{ s is iterable }}|{{ missing is iterable }}|{{ n is iterable }}",
    "{{ missing is defined }}|{{ missing is undefined }}|{{ none is none }}|{{ nested.list[2] is none }}|{{ n is odd }}|{{ n is even }}|{{ n is divisibleby 7 }}",
    "{{ flag is true }}|{{ nested.t is false }}|{{ 1 is true }}|{{ s is lower }}|{{ 'ABC' is upper }}|{{ n is eq 7 }}",
    # control flow
    "{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex0 }};{% endfor %}",
    "{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}{{ m.role }}{% if loop.index == 3 %}{% break %}{% endif %},{% endfor %}",
    "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}",
    "{% for m in messages %}{{ loop.previtem.role if loop.previtem is defined else '-' }}>{{ loop.nextitem.role if loop.nextitem is defined else '-' }} {% endfor %}",
    "{% set ns = namespace(count=0, seen=[]) %}{% for m in messages %}{% set ns.count = ns.count + 1 %}{% endfor %}{{ ns.count }}",
    "{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{% endfor %}{{ x }}",
    "{% macro greet(name, greeting='Hi') %}{{ greeting }} {{ name }}{% endmacro %}{{ greet('A') }}/{{ greet('B', greeting='Yo') }}",
    "{% set block %}captured {{ n }}{% endset %}[{{ block }}]|{% filter upper %}shout{% endfilter %}",
    "{{ 'yes' if flag else 'no' }}|{{ 'yes' if missing }}|{{ n if n > 5 else 0 }}|{{ not flag }}|{{ flag and n }}|{{ empty or 'alt' }}",
    "{{ n > 5 and n < 10 }}|{{ n == 7.0 }}|{{ s == 'abc' }}|{{ [1] == [1] }}|{{ d == {'b': 2, 'a': 1} }}|{{ n != 7 }}",
    # whitespace control
    "a\n  {% if flag %}\n  b\n  {% endif %}\nc\n",
    "a  {%- if flag -%}  b  {%- endif -%}  c|{{- ' d ' -}}|  {#- comment -#}  e",
    "line1\n    {%+ if flag %}kept indent{% endif %}\n{% if flag -%}\n  x\n{%- endif %}\nend",
    "  {# lstripped comment #}\nvalue: {{ n }}\n\n",
    # errors
    "{{ raise_exception('custom ' ~ n) }}",
    "{{ missing.attr }}",
    "{{ d.missing.deeper }}",
    "{{ n | tojson }}{{ missing | tojson }}",
]


def snippet_cases() -> list:
    from transformers.utils.chat_template_utils import render_jinja_template

    out = []
    for i, template in enumerate(SNIPPETS):
        case = {"name": f"snippet_{i:02d}", "template": template}
        ctx = json.loads(json.dumps(SNIPPET_CONTEXT))
        try:
            rendered, _ = render_jinja_template(
                conversations=[ctx["messages"]], chat_template=template, **ctx["extra"])
            case["expected"] = rendered[0]
        except jinja2.exceptions.TemplateError as err:
            kind = "raise" if template.startswith("{{ raise_exception") else "error"
            case["error"] = {"kind": kind, "message": str(err)}
        except Exception as err:  # a Python error inside a filter (e.g. TypeError in json.dumps)
            case["error"] = {"kind": "error", "message": f"{type(err).__name__}: {err}"}
        out.append(case)
    return out


def render(tokenizer_json: Path, model_dir: Path, case: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        shutil.copy(tokenizer_json, Path(tmp) / "tokenizer.json")
        tok = PreTrainedTokenizerFast.from_pretrained(tmp)
        # The conversation goes through a JSON round trip so Python sees exactly what Rust reads.
        data = json.loads(json.dumps(case))
        try:
            text = tok.apply_chat_template(
                data["messages"], tools=data["tools"], documents=data["documents"],
                chat_template=data["template_name"], add_generation_prompt=data["add_generation_prompt"],
                tokenize=False, **data["extra"])
            return {"expected": text}
        except jinja2.exceptions.TemplateError as err:
            return {"error": str(err)}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tokenizer_dir = OUT / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    tokenizer_json = tokenizer_dir / "tokenizer.json"
    tok.save(str(tokenizer_json))
    (tokenizer_dir / "cases.json").write_text(
        json.dumps(tokenizer_cases(Tokenizer.from_file(str(tokenizer_json))), ensure_ascii=False, indent=1) + "\n",
        encoding="utf-8")

    dirs = model_dirs()
    if MODELS.exists():
        shutil.rmtree(MODELS)
    for name, spec in dirs.items():
        write_model_dir(name, spec)

    rendered = []
    for case in cases(dirs):
        result = render(tokenizer_json, MODELS / case["model_dir"], case)
        rendered.append({**copy.deepcopy(case), **result})
    snippets = snippet_cases()
    meta = {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
            "tokenizers": tokenizers.__version__}
    (OUT / "cases.json").write_text(
        json.dumps({"generated_by": meta, "cases": rendered}, ensure_ascii=False, indent=1) + "\n",
        encoding="utf-8")
    (OUT / "snippets.json").write_text(
        json.dumps({"generated_by": meta, "context": SNIPPET_CONTEXT, "snippets": snippets},
                   ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum("error" in c for c in rendered)
    print(f"wrote {len(rendered)} cases ({errors} raise) for {len(dirs)} template dirs, "
          f"{len(snippets)} snippets")


if __name__ == "__main__":
    main()
