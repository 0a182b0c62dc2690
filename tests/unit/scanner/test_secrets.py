"""The secret scanner: every built-in rule finds its sample, the keyword prefilter never
loses a hit, allow rules, user rules files (and their errors), large files."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from moray.controlplane.scanner.engine.scan import ScanOptions, scan_image
from moray.controlplane.scanner.engine.secretconfig import SecretConfigError, load_secret_config
from moray.controlplane.scanner.engine.secrets import (
    RULES,
    KeywordIndex,
    SecretRule,
    SecretScanner,
    hidden_by,
)
from moray.controlplane.scanner.engine.source import OCILayoutSource
from tests.fixtures.images import rootfs
from tests.fixtures.images.builder import Image

ROOT = Path(__file__).resolve().parents[3]
ALNUM = "aB3dE6gH9jK2mN5pQ8sT1vWx4zY7cF0"


def _s(n: int, alphabet: str = ALNUM) -> str:
    return (alphabet * (n // len(alphabet) + 1))[:n]


# one sample per built-in rule (fake values, made here); a new rule needs one
SAMPLES = {
    "aws-access-key-id": f"aws_access_key_id = {rootfs.AWS_KEY_ID}",
    "aws-secret-access-key": f"aws_secret_access_key = {rootfs.AWS_SECRET}",
    "private-key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n"
                   "-----END RSA PRIVATE KEY-----",
    "github-token": "token: ghp_" + _s(36),
    "gitlab-token": "glpat-" + _s(20),
    "slack-token": "xoxb-123456789012-1234567890123-" + _s(24),
    "stripe-key": '{"key": "sk_live_' + _s(24) + '"}',
    "google-api-key": "key=AIza" + _s(35),
    "npm-token": "NPM_TOKEN=npm_" + _s(36),
    "database-url": "DATABASE_URL=postgres://app:S3cr3tPassw0rd@db.internal:5432/app",
    "gcp-service-account": '{"type": "service_account", "private_key_id": "' + "3f" * 20 + '"}',
    "azure-storage-key": "DefaultEndpointsProtocol=https;AccountName=x;AccountKey="
                         + "Ab3d" * 21 + "xY==;EndpointSuffix=core.windows.net",
    "sendgrid-key": "SG." + _s(22) + "." + _s(43),
    "twilio-key": "TWILIO=SK" + "0123456789abcdef" * 2,
    "huggingface-token": "HF_TOKEN=hf_" + _s(34, "AbCdEfGhIjKlMnOpQrStUvWxYz"),
    "openai-key": "OPENAI_API_KEY=sk-proj-" + _s(24) + "T3BlbkFJ" + _s(24),
    "pypi-token": "password = pypi-AgEIcHlwaS5vcmc" + _s(60),
    "npmrc-auth": "//registry.npmjs.org/:_authToken=npm-secret-value-1234",
    "docker-config-auth": '{"auths": {"r.example": {"auth": "dXNlcjpwYXNzd29yZA=="}}}',
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzb21lIjoicGF5bG9hZCJ9."
           "4twFt5NiznN84AWoo1d7KO1T_yoc0Z6XOpOVswacPZg",
    "generic-secret": 'api_key = "Zx81KqPw0vL3mT9rYb2N"',
}


def _brute_force(scanner: SecretScanner) -> SecretScanner:
    """The same rules without keywords: every rule runs on every text file."""
    return SecretScanner([replace(r, keywords=(), literals=()) for r in scanner.rules],
                         scanner.allow_rules)


def _corpus() -> list[tuple[str, bytes]]:
    """The samples, in other cases and inside other text, and this repository's sources."""
    out = []
    for rule, text in SAMPLES.items():
        for variant in (text, text.upper(), text.lower(), text.swapcase()):
            out.append((f"app/{rule}.txt", f"x = 1\n# {variant}\nend\n".encode()))
    out.append(("app/all.txt", "\n".join(SAMPLES.values()).encode()))
    for pattern in ("controlplane/**/*.py", "tests/unit/**/*.py", "docs/*.md", "bench/*.py"):
        for p in sorted(ROOT.glob(pattern)):
            out.append((f"app/{p.relative_to(ROOT)}", p.read_bytes()))
    return out


def test_every_builtin_rule_has_a_sample() -> None:
    assert {r.id for r in RULES} == set(SAMPLES)


@pytest.mark.parametrize("rule", sorted(SAMPLES))
def test_builtin_rule_finds_its_sample(rule: str) -> None:
    found = SecretScanner().scan_file("app/conf", SAMPLES[rule].encode(), "")
    assert rule in {f.rule for f in found}


@pytest.mark.parametrize("use_automaton", [True, False])
def test_keyword_prefilter_loses_no_hit(use_automaton: bool) -> None:
    scanner = SecretScanner()
    scanner._index = KeywordIndex(scanner.rules, use_automaton)
    brute = _brute_force(scanner)
    corpus = _corpus()
    assert len(corpus) > 100
    hits = 0
    for path, data in corpus:
        got = scanner.scan_file(path, data, "l")
        assert got == brute.scan_file(path, data, "l"), path
        hits += len(got)
    assert hits > len(SAMPLES)


@pytest.mark.parametrize("use_automaton", [True, False])
def test_files_scanned_together_give_what_each_gives_alone(use_automaton: bool) -> None:
    """The layer scan hands text files over in batches (one keyword lookup for many):
    same findings, in the same order, as file by file."""
    scanner = SecretScanner()
    scanner._index = KeywordIndex(scanner.rules, use_automaton)
    texts = [(p, d) for p, d in _corpus() if scanner.wants(p) and scanner.is_text(d)]
    alone = [f for p, d in texts for f in scanner.scan_file(p, d, "l")]
    assert len(alone) > len(SAMPLES)
    for size in (1, 7, len(texts)):
        together = [f for i in range(0, len(texts), size)
                    for f in scanner.scan_texts(texts[i:i + size], "l")]
        assert together == alone


def test_keyword_hidden_by_an_overlapping_one_is_found() -> None:
    """The search reports non-overlapping keywords: one that starts inside a reported
    keyword and ends past it (``t3blbkfj`` after ``secret``, ``asia`` after ``akia``) is
    still found, and one inside another (``secret`` in ``aws_secret``) is implied."""
    assert hidden_by(b"secret", [b"t3blbkfj", b"secret", b"cret"]) == [(0, 5)]
    idx = KeywordIndex(RULES)
    rule = {r.id: i for i, r in enumerate(RULES)}
    for text, wanted in ((b"x mysecret3blbkfj", {"openai-key", "generic-secret"}),
                         (b"akiasia", {"aws-access-key-id"}),
                         (b"aws_secret", {"aws-secret-access-key", "generic-secret"}),
                         (b"gho_auth", {"github-token", "npmrc-auth"})):
        assert {rule[r] for r in wanted} <= set(idx.lookup(text)[0]), text
    kws = {kw: k for k, kw in enumerate(idx.keywords)}
    low = b"akiasia\x00x\x00secret3blbkfj"
    found = idx.present(low, [0, 8, 10, len(low) + 1])
    assert found[0] == {kws[b"akia"], kws[b"asia"]} and found[1] == set()
    assert found[2] == {kws[b"secret"], kws[b"t3blbkfj"]}


def test_aws_key_id_starts_at_a_word_boundary() -> None:
    key = "AKIAIOSFODNN7EXAMPL3"
    s = SecretScanner()
    for text, found in ((key, True), (f"-{key}", True), (f"\n{key} ", True),
                        (f"x{key}", False), (f"_{key}", False), (f"9{key}", False),
                        (f"{key}X", False)):
        assert bool(s.scan_file("app/conf", text.encode(), "")) is found, text


def test_path_allow_rules_judged_as_their_regexes() -> None:
    """Directory rules (judged once per directory) and the substrings a rule's path
    needs (tested before its regex) decide as the regexes alone would."""
    paths = [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*"))[:3000]]
    for tree in ("usr/lib/python3/dist-packages", "app/node_modules/@x", "site-packages"):
        for rest in ("a/tests/t.py", "docs/x.txt", "a/README", "b/README.rst", "a.md",
                     "man/x.1", "examples/ex.py", "m-1.0.dist-info/METADATA", "a/b.so",
                     "pkg/testing/x", "x/doc/y", "y/example/z", "lib.pyc", "x"):
            paths.append(f"{tree}/{rest}")
    paths += ["usr/share/doc/x/copyright", "usr/share/docs", "usr/include/a.h", "README",
              "x/y.md5sums", "", "docs/", "node_modules/", "opt/app/docs/x.md"]
    s = SecretScanner()
    plain = [a.path for a in s.allow_rules if a.path is not None]
    for path in paths:
        assert s.wants(path) is not any(p.search(path) for p in plain), path


def test_npmrc_rule_tried_at_line_starts_finds_what_a_search_finds() -> None:
    """``from_line``: the regex is tried at one line start per keyword; the findings and
    their lines equal a plain search, with blank lines, indentation, tokens, CRLF and
    keywords inside values."""
    tok = "npm-secret-value-1234"
    texts = [f"_authToken={tok}", f"\n\n  \n//r.example/:_authToken={tok}\n",
             f"x //r/:_auth={tok}\n_password = {tok}2\r\n\t_auth={tok}_auth=x{tok}",
             f"a_auth={tok}\n  b //r/:_password={tok}\n\x0b\x0c_auth= {tok}",
             f"//r/:_authToken={tok} _auth={tok}3\n_AUTH={tok}\n_auth={tok}_password={tok}"]
    s = SecretScanner()
    brute = _brute_force(s)
    for text in texts:
        for data in (text.encode(), ("x\n" * 3 + text).encode()):
            got = s.scan_file("app/.npmrc", data, "")
            assert got == brute.scan_file("app/.npmrc", data, ""), data
            assert got or "_auth" not in text.lower()


def test_every_match_holds_a_keyword_of_its_rule() -> None:
    """The superset condition itself: each rule's keywords occur in each of its matches."""
    for path, data in _corpus():
        for rule in RULES:
            for m in rule.pattern.finditer(data):
                text = m.group(0).lower()
                assert any(k.encode() in text for k in rule.keywords), (rule.id, path)
                assert not rule.literals or any(lit in m.group(0) for lit in rule.literals)


def test_keyword_index_reports_overlapping_keywords() -> None:
    idx = KeywordIndex(RULES)
    ids = {r.id for i, r in enumerate(RULES) if i in idx.lookup(b"x AWS_SECRET_access_key")[0]}
    assert {"aws-secret-access-key", "generic-secret"} <= ids
    assert idx.lookup(b"nothing to see here") == ([], {})


def test_binary_files_are_skipped() -> None:
    data = b"\x7fELF\x00\x00" + SAMPLES["github-token"].encode()
    assert SecretScanner().scan_file("usr/bin/app", data, "") == []


def test_allow_rules_drop_package_noise_but_not_application_paths() -> None:
    s = SecretScanner()
    key = SAMPLES["github-token"].encode()
    for noise in ("usr/local/lib/python3.11/site-packages/pkg/tests/test_auth.py",
                  "usr/lib/python3/dist-packages/pkg/testing/fixtures.py",
                  "usr/lib/node_modules/npm/docs/content/npmrc.md",
                  "app/node_modules/lib/README.md",
                  "usr/share/doc/openssl/example.txt"):
        assert s.scan_file(noise, key, "") == [], noise
    for app in ("app/tests/config.py", "srv/docs/deploy.md", "app/examples/.env",
                "usr/local/lib/python3.11/site-packages/myapp/settings.py",
                "home/app/.config/gh/hosts.yml"):
        assert [f.rule for f in s.scan_file(app, key, "")] == ["github-token"], app


def test_placeholders_and_key_headers_are_not_secrets() -> None:
    s = SecretScanner()
    for text in ("alembic -x dbname=postgresql://user:pass@host/dbname upgrade",
                 "engine = create_engine('mysql://scott:tiger@localhost/test')",
                 "url: postgres://app:${DB_PASSWORD}@db:5432/app",
                 'key="-----BEGIN PRIVATE KEY-----\\nXXXX\\nXXXX\\n-----END PRIVATE KEY-----"',
                 '_SK_START = b"-----BEGIN OPENSSH PRIVATE KEY-----"'):
        assert s.scan_file("app/x.py", text.encode(), "") == [], text
    escaped = '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0B\\n"}'
    assert [f.rule for f in s.scan_file("app/sa.json", escaped.encode(), "")] == ["private-key"]


def test_secret_in_a_deleted_file_is_still_reported(tmp_path: Path) -> None:
    img = Image([{"app/.env": "\n".join(SAMPLES.values()).encode()}, {"app/.wh..env": b""}])
    img.write_oci_layout(tmp_path)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions(secrets=SecretScanner()))
    assert {s.rule for s in result.secrets} == set(SAMPLES)
    assert all(s.deleted_later for s in result.secrets)


def test_large_text_file_is_noted_not_scanned(tmp_path: Path) -> None:
    big = (SAMPLES["github-token"] + "\n").encode() * 1000
    img = Image([{"app/big.log": big, "app/big.bin": b"\x00" + big,
                  "app/small.env": big[:100]}])
    img.write_oci_layout(tmp_path)
    scanner = SecretScanner(max_bytes=len(big) - 1)
    result = scan_image(OCILayoutSource(tmp_path), ScanOptions(secrets=scanner))
    assert {s.path for s in result.secrets} == {"app/small.env"}
    assert [(w.path, w.reason) for w in result.warnings] == [
        ("app/big.log", f"text file larger than {len(big) - 1} bytes not scanned for secrets")]


RULES_FILE = r"""
rules:
  - id: acme-token
    title: ACME API token
    severity: critical
    regex: '(?P<secret>acme_[a-z0-9]{32})'
    keywords: [ACME_]
  - id: internal-password
    severity: medium
    regex: 'INTERNAL_PW=(\S+)'
    secret-group: 1
    path: '\.env$'
    allow-rules:
      - id: dev-password
        regex: '^dev-'
allow-rules:
  - id: our-fixtures
    description: fixtures with fake keys
    path: '^srv/fixtures/'
disable-rules: [twilio-key]
disable-allow-rules: [package-tests]
"""


def test_rules_file_adds_allows_and_disables(tmp_path: Path) -> None:
    cfg = tmp_path / "secrets.yaml"
    cfg.write_text(RULES_FILE)
    s = load_secret_config(cfg)
    token = "acme_" + "0123456789abcdef" * 2
    found = s.scan_file("app/conf.txt", f"x={token}\n".encode(), "")
    assert [(f.rule, f.title, str(f.severity), f.masked) for f in found] == [
        ("acme-token", "ACME API token", "critical", "acme" + "*" * 16)]
    assert s.scan_file("srv/fixtures/conf.txt", token.encode(), "") == []
    assert [f.rule for f in s.scan_file("app/.env", b"INTERNAL_PW=Zx81KqPw", "")] == [
        "internal-password"]
    assert s.scan_file("app/.env", b"INTERNAL_PW=dev-1234", "") == []
    assert s.scan_file("app/conf.txt", b"INTERNAL_PW=Zx81KqPw", "") == []  # path: only .env
    assert s.scan_file("app/x", SAMPLES["twilio-key"].encode(), "") == []
    pkg_test = "usr/lib/python3/dist-packages/pkg/tests/conf.py"
    assert [f.rule for f in s.scan_file(pkg_test, SAMPLES["github-token"].encode(), "")] == [
        "github-token"]
    assert s.fingerprint != SecretScanner().fingerprint  # cached layers are redone


def test_rules_file_enable_builtin_rules(tmp_path: Path) -> None:
    cfg = tmp_path / "secrets.yaml"
    cfg.write_text("enable-builtin-rules: [aws-access-key-id]\n")
    assert [r.id for r in load_secret_config(cfg).rules] == ["aws-access-key-id"]
    cfg.write_text("")
    assert len(load_secret_config(cfg).rules) == len(RULES)


@pytest.mark.parametrize(("text", "where"), [
    ("rules:\n  - id: a\n    severity: high\n    regex: '(unclosed'\n",
     ":4: rules[0].regex: invalid regular expression"),
    ("rules:\n  - id: a\n    regex: x\n", ":2: rules[0].severity: required field is missing"),
    ("rules:\n  - id: a\n    severity: urgent\n    regex: x\n",
     ":3: rules[0].severity: 'urgent' is not one of"),
    ("rules:\n  - id: a\n    severity: high\n    regex: x\n    keyword: [x]\n",
     ":5: rules[0].keyword: unknown field"),
    ("rules:\n  - id: a\n    severity: high\n    regex: x\n    keywords: ['']\n",
     ":5: rules[0].keywords: empty keyword"),
    ("rules:\n  - id: a\n    severity: high\n    regex: x\n    keywords: [clé]\n",
     ":5: rules[0].keywords: keyword 'clé' is not ASCII"),
    ("rules:\n  - id: a\n    severity: high\n    regex: x\n    keywords: [\"a\\x00b\"]\n",
     ":5: rules[0].keywords: keyword 'a\\x00b' holds a NUL"),
    ("rules:\n  - id: a\n    severity: high\n    regex: x\n    secret-group: 2\n",
     ":5: rules[0].secret-group: the regex has 0 groups"),
    ("rules:\n  - id: jwt\n    severity: high\n    regex: x\n",
     ":2: rules[0].id: duplicate rule id 'jwt'"),
    ("allow-rules:\n  - id: x\n    description: nothing to match\n",
     ":2: allow-rules[0]: an allow rule needs a path or a regex"),
    ("disable-rules: [no-such-rule]\n", ":1: disable-rules: no rule with id 'no-such-rule'"),
    ("rule: []\n", ":1: (top level).rule: unknown field"),
    ("rules: [\n", ": not valid YAML"),
])
def test_bad_rules_file_names_file_line_and_field(tmp_path: Path, text: str, where: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(SecretConfigError) as err:
        load_secret_config(cfg)
    assert str(err.value).startswith(str(cfg))
    assert where in str(err.value)


@pytest.mark.parametrize("use_automaton", [True, False])
def test_anchored_rule_is_tried_at_its_keywords(use_automaton: bool) -> None:
    idx = KeywordIndex(RULES, use_automaton)
    generic = next(i for i, r in enumerate(RULES) if r.id == "generic-secret")
    data = b'x = 1\nPASSWORD = "Zx81KqPw0vL3mT9rYb2N"\nmy_secret: "a"\nsecret: 1\n'
    _, starts = idx.lookup(data)
    # PASSWORD, the secret in my_secret, secret
    assert starts[generic] == [6, data.find(b"secret"), data.find(b"secret: 1")]
    found = SecretScanner().scan_file("app/x.py", data, "")
    assert [(f.rule, f.line) for f in found] == [("generic-secret", 2)]


def test_anchored_positions_from_the_search_equal_every_occurrence() -> None:
    """The automaton reports non-overlapping matches; where the anchored keywords start
    is taken from them (``occurrences_near``) and must be every occurrence, as a
    ``bytes.find`` loop gives: keywords inside, overlapping, straddling and repeating
    each other (``abab`` in ``ababab``), the built-in ones and the files of a batch."""
    own = (SecretRule("a", "a", RULES[0].severity, re.compile(rb"x"),
                      keywords=("abab", "bab", "ab", "babx", "xab"), anchored=True),
           SecretRule("b", "b", RULES[0].severity, re.compile(rb"y"),
                      keywords=("abx", "aaaa", "aa"), from_line=True),
           SecretRule("c", "c", RULES[0].severity, re.compile(rb"z"),
                      keywords=("bxa", "aab")))
    rng = random.Random(7)
    for rules, parts in ((RULES, ["secret", "passw", "_auth", "_password", "api_key",
                                  "auth_token", "aws_secret", "t3blbkfj", "apikey", "x",
                                  " ", "\n", "s", "_", "token", "access"]),
                         (own, ["a", "b", "x", "ab", "ba", "abab", "aaa", "\n", " "])):
        fast, slow = KeywordIndex(rules), KeywordIndex(rules, use_automaton=False)
        assert fast._searchers  # ahocorasick-rs is a dependency
        for _ in range(400):
            files = [("".join(rng.choice(parts) for _ in range(rng.randrange(0, 30)))
                      .encode()) for _ in range(rng.randrange(1, 4))]
            for data in files:
                assert fast.lookup(data) == slow.lookup(data), data
            lowered = b"\x00".join(files).lower()
            bounds = [0]
            for data in files:
                bounds.append(bounds[-1] + len(data) + 1)
            found, spots = fast.search(lowered, bounds)
            assert spots is not None
            for n in range(len(files)):
                lo, hi = bounds[n], bounds[n + 1] - 1
                assert fast.rules_for(found[n], lowered, lo, hi, spots[n]) == \
                    slow.rules_for(found[n], lowered, lo, hi), files


def test_rfc6749_example_tokens_are_not_secrets() -> None:
    """oauthlib quotes the RFC's example tokens; a real-looking token beside them is kept."""
    src = (b'def example():\n    access_token = "2YotnFZFEjr1zCsicMWpAA"\n'
           b'    refresh_token = "tGzv3JOkF0XG5Qx2TlKWIA"\n')
    path = "usr/lib/python3/dist-packages/oauthlib/oauth2/rfc6749/tokens.py"
    assert SecretScanner().scan_file(path, src, "l") == []
    real = src.replace(b"2YotnFZFEjr1zCsicMWpAA", b"9ZqotnFZFkjr1zCxicMWpQB")
    assert [f.rule for f in SecretScanner().scan_file("app/settings.py", real, "l")] == [
        "generic-secret"]
