"""Shared fixtures. Unit tests need no server; integration fixtures are in integration/.

Input files. Every test of the pipeline, replay and the commands reads files generated
here, deterministically, in the formats of the third-party samples (REES46 and Taobao
CSV, OTTO JSON Lines): a clone of the repository alone runs them. Only the tests about
the samples themselves (their counts, their quirks) read the real files, from
INTENT_SAMPLES_DIR (default: `../shared/data/` next to the checkout; they have no
redistribution licence, so they are never committed). Those tests are marked `samples`
and skip when the files are missing, or fail when CI is set: CI must run them.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

SAMPLES_ENV = "INTENT_SAMPLES_DIR"
DEFAULT_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_FILES = (
    "rees46_2019-10-01_head.csv.gz",
    "taobao_userbehavior_2017-11-26.csv.gz",
    "otto_20_sessions.jsonl.gz",
)


def samples_dir() -> Path:
    """Where the third-party samples are: INTENT_SAMPLES_DIR, else `../shared/data/`."""
    configured = os.environ.get(SAMPLES_ENV, "").strip()
    return Path(configured).expanduser().resolve() if configured else DEFAULT_SAMPLES


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reads the samples (through `shared_data`, directly or by way of
    another fixture) is marked `samples`, so `-m "not samples"` leaves them out."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.samples)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of the real third-party samples (see its PROVENANCE.md)."""
    folder = samples_dir()
    missing = [name for name in SAMPLE_FILES if not (folder / name).is_file()]
    if missing:
        what = "the third-party samples" if len(missing) == len(SAMPLE_FILES) else missing[0]
        reason = f"{what} not found in {folder}: set {SAMPLES_ENV} to the samples' folder"
        if in_ci():
            pytest.fail(f"{reason} (CI runs the samples tests)", pytrace=False)
        pytest.skip(reason)
    return folder


# --- generated input files ------------------------------------------------------------

REES46_START = datetime(2019, 11, 4, 8, 0, tzinfo=UTC)
REES46_SPAN = 3 * 3600  # seconds: shoppers arrive over three hours
REES46_SHOPPERS = 4600
REES46_SEED = 46
# What `write_rees46` writes with its defaults (tests/unit/test_generated_files.py checks)
REES46_TYPES = {"product_view": 19_090, "add_to_cart": 165, "purchase": 188}
REES46_EVENTS = sum(REES46_TYPES.values())  # 19,443
REES46_COLUMNS = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
# Category codes as REES46 spells them (dots); an empty one makes the reader fall back to
# the numeric category id. Prefixes the default rules name (electronics, apparel) and not.
CATEGORY_CODES = (
    "electronics.smartphone", "electronics.audio.headphone", "electronics.video.tv",
    "computers.notebook", "appliances.kitchen.washer", "appliances.environment.vacuum",
    "apparel.shoes", "apparel.jacket", "furniture.living_room.sofa", "construction.tools.drill",
    "kids.toys", "", "", "",
)  # fmt: skip
BRANDS = ("acme", "globex", "initech", "umbrella", "hooli", "vandelay", "")
# Seconds between two events of a visit: often none (REES46 logs several views of one
# second), else a few seconds to several minutes.
REES46_GAPS = (0, 0, 0, 1, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 150, 240, 420)


def _catalogue(rng: random.Random) -> list[list[tuple[str, str, str, str, str]]]:
    """Per category, its products: (product_id, category_id, category_code, brand, price)."""
    ids = iter(rng.sample(range(1_000_000, 99_999_999), 40 * len(CATEGORY_CODES)))
    categories = []
    for code in CATEGORY_CODES:
        category_id = str(2_053_013_550_000_000_000 + rng.randrange(10**10))
        low = rng.choice((5, 20, 80, 200))
        categories.append([
            (str(next(ids)), category_id, code, rng.choice(BRANDS),
             f"{rng.uniform(low, low * 8):.2f}")
            for _ in range(40)
        ])  # fmt: skip
    return categories


def _rees46_shopper(
    rng: random.Random, user: str, catalogue: list[list[tuple[str, str, str, str, str]]]
) -> list[tuple[float, str]]:
    """One shopper's rows as (unix time, CSV line): one to three visits (a new session
    id after more than 30 idle minutes), product views mostly within one category, the
    same product again now and then; keen shoppers add to the cart and buy, sometimes a
    product they never put in the cart (as in REES46)."""
    t = REES46_START.timestamp() + rng.uniform(0, REES46_SPAN)
    keen = rng.random() < 0.08
    visits = 1 if rng.random() < 0.85 else rng.randint(2, 3)
    rows: list[tuple[float, str]] = []
    seen: list[tuple[str, str, str, str, str]] = []
    cart: list[tuple[str, str, str, str, str]] = []
    written: set[tuple[int, str, str]] = set()

    def row(kind: str, product: tuple[str, str, str, str, str], session: str) -> None:
        nonlocal t
        while (int(t), kind, product[0]) in written:
            t += 1  # not the very same row again (`write_rees46` adds three on purpose)
        written.add((int(t), kind, product[0]))
        when = datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        sku, category_id, code, brand, price = product
        rows.append(
            (int(t), f"{when},{kind},{sku},{category_id},{code},{brand},{price},{user},{session}")
        )

    for visit in range(visits):
        if visit:
            t += rng.uniform(35 * 60, 100 * 60)
        session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        category = rng.choice(catalogue)
        alpha = 1.0 if keen else 1.4  # many views now and then, most visits a few
        views = 1 if rng.random() < 0.12 else min(1 + int(rng.paretovariate(alpha)), 40)
        for _ in range(views):
            if seen and rng.random() < 0.25:
                product = rng.choice(seen)  # back to one seen before
            else:
                product = rng.choice(category if rng.random() < 0.85 else rng.choice(catalogue))
            row("view", product, session)
            seen.append(product)
            if keen and rng.random() < 0.08:
                t += rng.choice(REES46_GAPS)
                row("cart", product, session)
                cart.append(product)
            t += rng.choice(REES46_GAPS)
        if keen and visit == visits - 1 and rng.random() < 0.5:
            t += rng.choice(REES46_GAPS) + 30
            bought = cart or seen[-2:]
            for product in bought[: 1 if rng.random() < 0.85 else 2]:
                row("purchase", product, session)
    return rows


def write_rees46(
    path: Path, *, seed: int = REES46_SEED, shoppers: int = REES46_SHOPPERS, quirks: bool = True
) -> Path:
    """A REES46-format CSV (gzip if `path` ends in .gz) of generated shoppers, in time
    order, with the header. `quirks`, as in the real export: three rows repeated byte
    for byte (one four times, two twice) and a last line cut short (8 fields of 9)."""
    rng = random.Random(seed)
    catalogue = _catalogue(rng)
    rows = [
        item for i in range(shoppers)
        for item in _rees46_shopper(rng, str(510_000_000 + 7 * i), catalogue)
    ]  # fmt: skip
    rows.sort(key=lambda item: item[0])  # stable: a shopper's rows of one second in order
    lines = [line for _, line in rows]
    if quirks:
        for index, times in ((len(lines) // 5, 3), (len(lines) // 2, 1), (len(lines) * 4 // 5, 1)):
            lines[index + 1 : index + 1] = [lines[index]] * times
        *kept, _ = lines.pop().split(",")
        lines.append(",".join(kept))
    text = REES46_COLUMNS + "\n" + "".join(line + "\n" for line in lines)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as out:
        out.write(text)
    return path


def write_taobao(path: Path, *, seed: int = 11, rows: int = 400) -> Path:
    """A Taobao UserBehavior CSV (no header: user, item, category, behaviour, unix s)."""
    rng = random.Random(seed)
    start = int(datetime(2017, 12, 1, 1, 0, tzinfo=UTC).timestamp())
    kinds = ["pv"] * 18 + ["cart", "fav", "buy"]
    lines = sorted(
        (start + rng.randrange(7200), rng.randrange(1, 1_000_000), rng.randrange(1, 5_000_000),
         rng.randrange(1, 5_000_000), rng.choice(kinds))
        for _ in range(rows)
    )  # fmt: skip
    text = "".join(f"{user},{item},{cat},{kind},{ts}\n" for ts, user, item, cat, kind in lines)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as out:
        out.write(text)
    return path


def write_otto(path: Path, *, seed: int = 8, sessions: int = 40) -> Path:
    """OTTO recsys JSON Lines: a session a line, clicks with now and then carts and orders
    of clicked articles, over days (ms timestamps)."""
    rng = random.Random(seed)
    lines = []
    for session in range(sessions):
        ts = int(datetime(2022, 8, 1, tzinfo=UTC).timestamp() * 1000) + rng.randrange(86_400_000)
        clicked: list[int] = []
        events = []
        for _ in range(rng.randint(1, 80)):
            ts += rng.choice((900, 4000, 15_000, 40_000, 120_000, 2_400_000, 50_000_000))
            if clicked and rng.random() < 0.07:
                kind, aid = ("orders" if rng.random() < 0.3 else "carts"), rng.choice(clicked)
            else:
                kind, aid = "clicks", rng.randrange(1, 1_855_603)
                clicked.append(aid)
            events.append({"aid": aid, "ts": ts, "type": kind})
        lines.append(json.dumps({"session": session, "events": events}, separators=(",", ":")))
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="session")
def rees46_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`write_rees46`'s file (its defaults): read it, never change it."""
    return write_rees46(tmp_path_factory.mktemp("generated") / "rees46_generated.csv.gz")


@pytest.fixture(scope="session")
def otto_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`write_otto`'s file (its defaults): read it, never change it."""
    return write_otto(tmp_path_factory.mktemp("generated") / "otto_generated.jsonl.gz")


@pytest.fixture(scope="session")
def taobao_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`write_taobao`'s file (its defaults): read it, never change it."""
    return write_taobao(tmp_path_factory.mktemp("generated") / "taobao_generated.csv.gz")
