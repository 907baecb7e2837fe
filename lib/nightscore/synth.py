"""Synthetic customer snapshots with a known ground truth, plus generic row corruption.

The generator exists so every job can be exercised end to end without bank data, and so
model quality can be judged against the truth that produced the labels:

* ``generate`` draws a population (SPEC §2 default columns, fake PII, free-text notes),
  then a known logistic default model and known per-product take-up propensities.
* ``corrupt`` damages a fraction of rows in every way the validator must catch; it reads
  only the schema config, so it works on any bank's snapshot, not just this one.

Everything is vectorised with numpy / Arrow compute (loops run only over the small fixed
sets of products, features and corruption kinds) and deterministic in its seed.
"""
from __future__ import annotations

import datetime as dt
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from .config import ConfigError, FeatureSpec, SchemaSpec

# --------------------------------------------------------------------------- vocabularies
EMPLOYMENT = np.array(["employed", "self_employed", "unemployed", "retired", "student"])
HOME = np.array(["own", "mortgage", "rent", "other"])
EXPERIENCE = np.array(["none", "basic", "informed", "advanced"])
REGIONS = ["London", "South East", "South West", "Midlands", "North West", "North East", "Scotland", "Wales"]
REGION_WEIGHTS = np.array([0.16, 0.17, 0.11, 0.17, 0.13, 0.09, 0.10, 0.07])
# (town, postcode area) per region, three each, in REGIONS order.
TOWNS = [
    ("London", "E"), ("London", "SW"), ("London", "N"),
    ("Reading", "RG"), ("Brighton", "BN"), ("Guildford", "GU"),
    ("Bristol", "BS"), ("Exeter", "EX"), ("Plymouth", "PL"),
    ("Birmingham", "B"), ("Nottingham", "NG"), ("Leicester", "LE"),
    ("Manchester", "M"), ("Liverpool", "L"), ("Preston", "PR"),
    ("Newcastle", "NE"), ("Leeds", "LS"), ("Sunderland", "SR"),
    ("Glasgow", "G"), ("Edinburgh", "EH"), ("Aberdeen", "AB"),
    ("Cardiff", "CF"), ("Swansea", "SA"), ("Newport", "NP"),
]
FIRST_NAMES = [
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy", "Leo", "Lily",
    "Arthur", "Grace", "Muhammad", "Freya", "Oscar", "Emily", "Charlie", "Sophie", "Jacob", "Ella",
    "Thomas", "Chloe", "James", "Poppy", "William", "Evie", "Henry", "Ruby", "Alfie", "Jessica",
    "Joshua", "Daisy", "Freddie", "Alice", "Archie", "Florence", "Ethan", "Phoebe", "Samuel", "Anna",
    "David", "Sarah", "Peter", "Margaret", "John", "Susan", "Priya", "Aisha", "Raj", "Fatima",
    "Wei", "Mei", "Tomasz", "Zofia", "Kwame", "Ama", "Sean", "Siobhan", "Rhys", "Cerys",
]
LAST_NAMES = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Robinson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson",
    "Clarke", "Khan", "Hughes", "Edwards", "Turner", "Hill", "Moore", "Cooper", "Ward", "Morris",
    "King", "Watson", "Harris", "Lewis", "Baker", "Young", "Allen", "Mitchell", "Singh", "Ahmed",
    "Chen", "Nowak", "Kowalski", "Mensah", "Murphy", "Kelly", "MacDonald", "Campbell", "Stewart", "Price",
]
STREETS = [
    "High", "Church", "Station", "Victoria", "Park", "Mill", "Manor", "Kings", "Queens", "Albert",
    "Grange", "Chapel", "School", "Green", "Orchard", "Meadow", "Springfield", "Windsor", "York", "Castle",
]
STREET_TYPES = ["Street", "Road", "Lane", "Avenue", "Close", "Drive", "Way", "Gardens"]
POSTCODE_LETTERS = list("ABDEFGHJLNPQRSTUWXYZ")
NI_PREFIXES = ["AB", "CE", "GH", "JK", "LM", "NP", "PR", "SW", "TY", "WZ", "EH", "OA"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net"]

# Note topics. The first six carry signal into the truth model; "neutral" carries none.
TOPICS = ["hardship", "mortgage", "retirement", "travel", "savings", "investing", "neutral"]
PHRASES: dict[str, list[str]] = {
    "hardship": [
        "Customer said they lost their job last month and is worried about repayments.",
        "Asked for a payment holiday because of financial hardship.",
        "Mentioned a missed payment on a loan with another lender.",
        "Has been using payday loans to cover household bills.",
        "Struggling to pay the rent this month, asked to extend the overdraft.",
        "Hours cut at work, income has dropped and bills are piling up.",
    ],
    "mortgage": [
        "Asked about mortgage rates for buying a first home.",
        "Looking to buy a house next year, wants to know how much they could borrow.",
        "Enquired about remortgaging when the current fixed rate ends.",
        "Saving for a deposit on a flat, asked about mortgage options.",
    ],
    "retirement": [
        "Asked about pension options ahead of retirement.",
        "Planning to retire in a few years, wants to understand retirement income.",
        "Wants to combine old workplace pensions into one.",
    ],
    "travel": [
        "Going abroad this summer, asked about card fees overseas.",
        "Asked about travel insurance for a family holiday.",
        "Travels often for work, interested in a card with no foreign transaction fees.",
    ],
    "savings": [
        "Wants somewhere to keep savings at a better rate.",
        "Asked about fixed rate savings accounts.",
        "Looking to build an emergency savings pot.",
    ],
    "investing": [
        "Interested in investing in stocks and shares.",
        "Asked about managed funds and how investment risk works.",
        "Wants to start investing a fixed amount every month.",
    ],
    "neutral": [
        "Updated their address after moving.",
        "Card replaced after it was damaged.",
        "Could not log in to the app, password reset.",
        "Asked for copies of last year's statements.",
        "Changed the date of a direct debit.",
        "Asked about branch opening hours.",
    ],
}
CHANNELS = ["Phone call:", "Branch visit:", "Web chat:", "Secure message:"]
CONTACT_INTROS = ["Please call me on ", "Best number is ", "Email me at ", "You can reach me at "]
CONTACT_IS_PHONE = np.array([True, True, False, False])
NOTE_RATE = 0.6
CONTACT_RATE = 0.1
SECOND_PHRASE_RATE = 0.3

# --------------------------------------------------------------------------- truth model
# Default model: logit PD = PD_INTERCEPT + sum(PD_WEIGHTS[k] * standardised input k).
# Inputs are standardised with fixed reference constants (the drift-0 population), so the
# truth is the same function in every chunk and drift moves PD rather than being absorbed.
PD_INTERCEPT = -3.40
PD_WEIGHTS = {
    "utilization": 0.55,
    "dti": 0.35,
    "late_payments": 0.45,
    "recent_delinquency": 0.35,
    "inquiries": 0.25,
    "income": -0.35,
    "tenure": -0.20,
    "age": -0.15,
    "unemployed": 0.70,
    "student": 0.30,
    "self_employed": 0.15,
    "retired": -0.10,
    "note_hardship": 1.10,
}
# (mean, sd) of each continuous risk input in the drift-0 population.
PD_REFERENCE = {
    "utilization": (0.212, 0.181),
    "dti": (0.113, 0.107),
    "late_payments": (0.132, 0.303),
    "recent_delinquency": (0.184, 0.379),
    "inquiries": (0.326, 0.422),
    "income": (10.342, 0.651),
    "tenure": (3.956, 0.907),
    "age": (48.5, 14.4),
}
PD_LOGIT_REFERENCE = (-3.29, 1.41)  # (mean, sd) of the PD logit, for the propensities' risk input

# Product take-up: each product id is matched to families by the tokens in its id (e.g.
# CC_TRAVEL = card + travel); the product's logit is the sum of its families' terms.
# "a" = intercept, "h" = extra logit for already holding it; other keys weight the inputs
# built in _propensity_inputs. An id matching no family gets a mild generic profile.
FEATURE_INPUTS = ["age", "income", "tenure", "risk_tolerance", "experience", "young", "senior", "mortgaged",
                  "renter", "risk"]
PROPENSITY_INPUTS = FEATURE_INPUTS + [f"note_{t}" for t in TOPICS[:-1]]
FAMILIES: dict[str, tuple[tuple[str, ...], dict[str, float]]] = {
    "current": (("CUR", "CURRENT", "CHECKING"), {"a": -4.4, "h": 6.0, "young": 1.2, "tenure": -0.5}),
    "saver": (("SAVER", "SAVINGS", "SAVE", "BOND", "ISA", "DEPOSIT"),
              {"a": -3.9, "h": 1.2, "income": 0.4, "age": 0.2, "note_savings": 2.2, "note_hardship": -0.8}),
    "young": (("YOUNG", "JUNIOR", "STUDENT", "KIDS"), {"a": -3.0, "young": 5.0}),
    "card": (("CC", "CARD"), {"a": -4.2, "h": 1.6, "income": 0.3, "risk": -0.5, "young": 0.3}),
    "travel": (("TRAVEL",), {"income": 0.3, "note_travel": 2.4}),
    "loan": (("LOAN", "LENDING"), {"a": -4.2, "h": 0.4, "risk": -0.3, "note_hardship": 0.6, "age": -0.3}),
    "mortgage": (("MORTGAGE", "MTG", "HOMELOAN"),
                 {"a": -5.0, "h": 0.6, "income": 0.5, "risk": -0.4, "note_mortgage": 2.8}),
    "first_time": (("FTB", "FIRST"), {"renter": 1.2, "mortgaged": -1.5, "age": -0.6}),
    "remortgage": (("REMO", "REMORTGAGE"), {"mortgaged": 2.0, "renter": -1.5}),
    "fund": (("FUND", "INVEST", "ETF", "ISA_SS"),
             {"a": -4.6, "h": 0.6, "income": 0.5, "risk_tolerance": 0.6, "experience": 0.5, "note_investing": 2.5}),
    "adventurous": (("GROWTH", "EM", "EQUITY", "SIPP"), {"a": -1.2, "risk_tolerance": 0.6, "experience": 0.8}),
    "pension": (("PENSION", "SIPP", "RETIRE"),
                {"a": -4.6, "h": 1.0, "income": 0.3, "age": 0.4, "note_retirement": 2.8}),
    "insurance": (("INS", "INSURANCE", "COVER"), {"a": -4.3, "h": 1.0, "income": 0.2}),
    "home": (("HOME", "BUILDINGS", "CONTENTS"), {"mortgaged": 1.0, "renter": -0.4, "age": 0.2}),
    "life": (("LIFE",), {"mortgaged": 0.8, "age": 0.2, "senior": -0.5}),
}
GENERIC_FAMILY = {"a": -4.0, "h": 0.5}


# --------------------------------------------------------------------------- catalog
def catalog_product_ids(uri: str) -> list[str]:
    """Product ids in catalog order, from ``builtin:NAME``, a local YAML file or a Parquet file.

    The generator needs only the ids, so it reads them itself rather than pulling in the
    suitability module. Problems raise ConfigError because the catalog is configuration.
    """
    if uri.startswith("builtin:"):
        path = Path(__file__).parent / "data" / uri[len("builtin:"):]
    else:
        path = Path(uri).expanduser()
    if not path.is_file():
        raise ConfigError(f"products.catalog: {uri} does not exist")
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if "product_id" not in table.column_names:
            raise ConfigError(f"products.catalog: {uri} has no product_id column")
        ids = [str(x) for x in table.column("product_id").to_pylist()]
    else:
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"products.catalog: {uri} is not valid YAML: {exc}") from None
        products = raw.get("products") if isinstance(raw, dict) else None
        if not isinstance(products, list) or not all(isinstance(p, dict) and "product_id" in p for p in products):
            raise ConfigError(f"products.catalog: {uri} needs a top-level 'products' list of entries with product_id")
        ids = [str(p["product_id"]) for p in products]
    if not ids or len(set(ids)) != len(ids):
        raise ConfigError(f"products.catalog: {uri} must list at least one product, each product_id once")
    return ids


# --------------------------------------------------------------------------- helpers
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _choose(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One categorical draw per row from row-specific (unnormalised) weights."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return (u[:, None] >= cum).sum(axis=1).clip(max=weights.shape[1] - 1)


def _pick(values: list[str] | np.ndarray, idx: np.ndarray) -> pa.Array:
    return pa.array(list(values), pa.string()).take(pa.array(idx))


def _digits(rng: np.random.Generator, n: int, width: int) -> pa.Array:
    """Zero-padded random digit strings of a fixed width."""
    return pc.utf8_lpad(pc.cast(pa.array(rng.integers(0, 10**width, n)), pa.string()), width, "0")


def _join(*parts: pa.Array | str, sep: str = "") -> pa.Array:
    """Element-wise string concatenation; null parts are left out."""
    return pc.binary_join_element_wise(*parts, sep, null_handling="skip")


def _list_column(mask: np.ndarray, items: list[str]) -> pa.Array:
    """list<string> column: row i holds items[j] for every True mask[i, j], in item order."""
    offsets = np.zeros(len(mask) + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    _, cols = np.nonzero(mask)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(items, pa.string()).take(pa.array(cols)))


def _family_weights(product_id: str) -> dict[str, float]:
    tokens = set(re.split(r"[^A-Z0-9]+", product_id.upper()))
    weights: dict[str, float] = {}
    for keywords, terms in FAMILIES.values():
        if tokens & set(keywords):
            for key, value in terms.items():
                weights[key] = weights.get(key, 0.0) + value
    if "a" not in weights:
        # Unknown kind of product: a generic profile with small id-seeded tilts, stable across runs.
        tilt = np.random.default_rng(zlib.crc32(product_id.encode())).normal(0.0, 0.3, len(PROPENSITY_INPUTS))
        weights = {**GENERIC_FAMILY, **dict(zip(PROPENSITY_INPUTS, tilt.tolist())), **weights}
    return weights


def _product_matrix(product_ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights [inputs x products], intercepts, held shifts) for the take-up model."""
    fams = [_family_weights(p) for p in product_ids]
    w = np.array([[f.get(k, 0.0) for f in fams] for k in PROPENSITY_INPUTS], dtype=np.float32)
    w = w.reshape(len(PROPENSITY_INPUTS), len(fams))
    a = np.array([f["a"] for f in fams], dtype=np.float32)
    return w, a, np.array([f.get("h", 0.0) for f in fams], dtype=np.float32)


# --------------------------------------------------------------------------- generation
def _population(rng: np.random.Generator, n: int, drift: float) -> dict[str, np.ndarray]:
    """Structured features as numpy arrays; drift moves the population towards higher risk."""
    d = float(drift)
    z = rng.standard_normal(n)  # latent financial fragility: ties utilisation, arrears and inquiries
    age = (18 + np.round(67 * rng.beta(2.0, 2.4 + 1.5 * d, n))).astype(np.int64)

    w = np.empty((n, 5))
    w[:, 0] = 0.75
    w[:, 1] = 0.12
    w[:, 2] = 0.05 * (1 + 1.5 * d)
    w[:, 3] = np.select([age >= 67, age >= 60, age >= 55], [9.0, 0.5, 0.08], 0.0)
    w[:, 4] = np.select([age < 23, age < 30], [0.7, 0.08], 0.005)
    emp = _choose(rng, w)

    median = np.array([32_000.0, 36_000.0, 9_000.0, 21_000.0, 7_000.0])[emp]
    median *= np.where(emp <= 1, np.exp(0.012 * (np.minimum(age, 50) - 35)), 1.0)
    income = np.round(median * np.exp(0.55 * rng.standard_normal(n) - 0.1 * z) * (1 - 0.25 * d), -1)
    income = np.maximum(income, 0.0)

    years = np.round(np.minimum(rng.gamma(2.0, 3.5, n), np.maximum(age - 16, 0)), 1)
    years_null = np.where(emp >= 2, np.where(emp == 3, 0.3, 0.7), 0.02) > rng.random(n)
    years = np.where(emp >= 2, np.round(np.minimum(rng.gamma(1.0, 1.5, n), years), 1), years)

    inc_f = np.clip(income / 35_000, 0.2, 3.0)
    w = np.empty((n, 4))
    w[:, 0] = 0.3 + 3.0 * (age >= 55)
    w[:, 1] = 0.3 + 2.0 * ((age >= 30) & (age < 65)) * inc_f
    w[:, 2] = 1.5 + 1.0 * (age < 35)
    w[:, 3] = 0.2 + 1.5 * (age < 28)
    home = _choose(rng, w)

    region = rng.choice(len(REGIONS), n, p=REGION_WEIGHTS)
    tenure = np.minimum((age - 18) * 12, np.round(rng.gamma(1.5, 50.0, n) * (1 - 0.3 * d))).astype(np.int64)
    accounts = (1 + rng.poisson(1.2 + 0.6 * (income > 40_000))).astype(np.int64)

    has_credit = rng.random(n) < np.where(emp == 4, 0.5, 0.88)
    limit = np.minimum(np.round(income * 0.3 * np.exp(0.5 * rng.standard_normal(n)), -1), 100_000.0)
    limit = np.where(has_credit, limit, 0.0)
    util = _sigmoid(-1.4 + 0.9 * z + 1.2 * d + 0.6 * rng.standard_normal(n))
    util = np.where(rng.random(n) < 0.02, util * 1.15, util)
    balance = np.round(util * limit, 2)
    util = np.divide(balance, limit, out=np.zeros(n), where=limit > 0)

    other = np.where(home == 1, income * 0.18 * np.exp(0.3 * rng.standard_normal(n)), 0.0)
    other += np.where(rng.random(n) < 0.3, income * 0.06 * np.exp(0.5 * rng.standard_normal(n)), 0.0)
    dti = np.minimum((balance * 0.36 + other * (1 + 0.6 * d)) / np.maximum(income, 1_000.0), 5.0).round(4)

    late = rng.poisson(np.exp(-2.0 + 0.9 * z + 0.7 * d + 0.5 * (emp == 2))).astype(np.int64)
    old_delinquency = rng.random(n) < _sigmoid(-1.8 + 0.6 * z + d)
    since = np.where(late > 0, rng.integers(0, 12, n), rng.integers(12, 121, n)).astype(np.int64)
    inquiries = rng.poisson(np.exp(-0.7 + 0.35 * z + 0.5 * d)).astype(np.int64)
    avg_balance = np.round(income / 12 * (0.5 + 0.8 * rng.standard_normal(n) - 0.3 * np.maximum(z, 0)), 2)
    txns = rng.poisson(np.exp(3.3 + 0.3 * rng.standard_normal(n))).astype(np.int64)

    log_inc = np.log(np.maximum(income, 1_000.0) / 30_000)
    rt = np.round(2.8 + 0.5 * log_inc - 0.025 * (age - 45) + 0.9 * rng.standard_normal(n))
    rt = np.clip(rt, 1, 5).astype(np.int64)
    exp_latent = 0.6 * (rt - 3) + 0.4 * log_inc + 0.02 * (age - 40) + rng.standard_normal(n)
    experience = np.searchsorted(np.array([-0.3, 0.8, 1.8]), exp_latent)
    vulnerable = rng.random(n) < _sigmoid(-3.4 + 1.5 * (age >= 75) + 1.0 * (emp == 2) + 0.6 * (income < 12_000))

    return {
        "age": age, "annual_income": income, "emp": emp, "employment_years": years, "years_null": years_null,
        "home": home, "region": region, "tenure_months": tenure, "n_open_accounts": accounts,
        "total_credit_limit": limit, "revolving_balance": balance, "credit_utilization": util,
        "debt_to_income": dti, "n_late_payments_12m": late, "since": since,
        "since_null": (late == 0) & ~old_delinquency, "n_inquiries_6m": inquiries,
        "avg_monthly_balance": avg_balance, "monthly_txn_count": txns, "risk_tolerance": rt,
        "experience": experience, "is_vulnerable": vulnerable,
    }


def _pii(rng: np.random.Generator, n: int, region: np.ndarray) -> dict[str, pa.Array]:
    """Fake names, contacts, NI numbers and addresses (reserved e-mail domains, drama-range phones)."""
    first_i = rng.integers(0, len(FIRST_NAMES), n)
    last_i = rng.integers(0, len(LAST_NAMES), n)
    first, last = _pick(FIRST_NAMES, first_i), _pick(LAST_NAMES, last_i)
    number = pc.if_else(pa.array(rng.random(n) < 0.5), _digits(rng, n, 2), pa.nulls(n, pa.string()))
    email = _join(pc.utf8_lower(first), ".", pc.utf8_lower(last), number, "@",
                  _pick(EMAIL_DOMAINS, rng.integers(0, len(EMAIL_DOMAINS), n)))
    phone = _join("07700 900", _digits(rng, n, 3))
    national_id = _join(_pick(NI_PREFIXES, rng.integers(0, len(NI_PREFIXES), n)), _digits(rng, n, 2),
                        _digits(rng, n, 2), _digits(rng, n, 2), _pick(list("ABCD"), rng.integers(0, 4, n)), sep=" ")
    town_i = region * 3 + rng.integers(0, 3, n)

    def letters() -> pa.Array:
        return _pick(POSTCODE_LETTERS, rng.integers(0, len(POSTCODE_LETTERS), n))

    postcode = _join(_pick([t[1] for t in TOWNS], town_i), pc.cast(pa.array(rng.integers(1, 21, n)), pa.string()), " ",
                     pc.cast(pa.array(rng.integers(1, 10, n)), pa.string()), letters(), letters())
    address = _join(pc.cast(pa.array(rng.integers(1, 200, n)), pa.string()), " ",
                    _pick(STREETS, rng.integers(0, len(STREETS), n)), " ",
                    _pick(STREET_TYPES, rng.integers(0, len(STREET_TYPES), n)), ", ",
                    _pick([t[0] for t in TOWNS], town_i), " ", postcode)
    return {"full_name": _join(first, last, sep=" "), "email": email, "phone": phone,
            "national_id": national_id, "address": address}


def _notes(rng: np.random.Generator, pop: dict[str, np.ndarray], email: pa.Array, phone: pa.Array
           ) -> tuple[pa.Array, np.ndarray]:
    """Interaction notes and a (rows x topics) flag matrix of the topics each note mentions."""
    n = len(pop["age"])
    age, emp, home = pop["age"], pop["emp"], pop["home"]
    w = np.empty((n, len(TOPICS)))
    arrears = np.minimum(pop["n_late_payments_12m"], 3)
    w[:, 0] = 0.08 * (1 + 2.5 * (emp == 2) + 0.8 * arrears + 1.5 * (pop["credit_utilization"] > 0.8))
    w[:, 1] = 0.10 * (1 + 1.5 * ((home == 2) & (age >= 25) & (age < 45)) + 1.0 * (home == 1))
    w[:, 2] = 0.06 * (1 + 3.0 * (age >= 50) * (emp != 3))
    w[:, 3] = 0.10 * np.clip(pop["annual_income"] / 30_000, 0.3, 2.5)
    w[:, 4] = 0.14
    w[:, 5] = 0.07 * (1 + 0.6 * (pop["risk_tolerance"] - 1))
    w[:, 6] = 0.35
    counts = np.array([len(PHRASES[t]) for t in TOPICS])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = [p for t in TOPICS for p in PHRASES[t]]

    def phrase() -> tuple[np.ndarray, pa.Array]:
        topic = _choose(rng, w)
        return topic, _pick(flat, starts[topic] + (rng.random(n) * counts[topic]).astype(np.int64))

    topic1, text1 = phrase()
    topic2, text2 = phrase()
    has_note = rng.random(n) < NOTE_RATE
    has_second = rng.random(n) < SECOND_PHRASE_RATE
    has_channel = rng.random(n) < 0.7
    contact_kind = rng.integers(0, len(CONTACT_INTROS), n)
    has_contact = rng.random(n) < CONTACT_RATE
    null = pa.nulls(n, pa.string())
    contact_value = pc.if_else(pa.array(CONTACT_IS_PHONE[contact_kind]), phone, email)
    contact = _join(_pick(CONTACT_INTROS, contact_kind), contact_value)
    text = _join(pc.if_else(pa.array(has_channel), _pick(CHANNELS, rng.integers(0, len(CHANNELS), n)), null),
                 text1, pc.if_else(pa.array(has_second), text2, null),
                 pc.if_else(pa.array(has_contact), contact, null), sep=" ")
    flags = np.zeros((n, len(TOPICS)), dtype=bool)
    flags[np.arange(n), topic1] = True
    flags[np.arange(n), topic2] |= has_second
    flags &= has_note[:, None]
    return pc.if_else(pa.array(has_note), text, null), flags


def _pd_logit(pop: dict[str, np.ndarray], flags: np.ndarray) -> np.ndarray:
    """The true default logit: fixed weights on fixed-reference standardised inputs."""
    since = pop["since"]
    recent = np.where(pop["since_null"], 0.0, np.select([since < 12, since < 36], [1.0, 0.5], 0.0))
    raw = {
        "utilization": np.minimum(pop["credit_utilization"], 1.5),
        "dti": np.minimum(pop["debt_to_income"], 2.0),
        "late_payments": np.log1p(pop["n_late_payments_12m"]),
        "recent_delinquency": recent,
        "inquiries": np.log1p(pop["n_inquiries_6m"]),
        "income": np.log(pop["annual_income"] + 1_000.0),
        "tenure": np.log1p(pop["tenure_months"]),
        "age": pop["age"].astype(np.float64),
    }
    logit = np.full(len(since), PD_INTERCEPT)
    for key, (mean, sd) in PD_REFERENCE.items():
        logit += PD_WEIGHTS[key] * (raw[key] - mean) / sd
    for code, name in enumerate(EMPLOYMENT):
        logit += PD_WEIGHTS.get(str(name), 0.0) * (pop["emp"] == code)
    return logit + PD_WEIGHTS["note_hardship"] * flags[:, TOPICS.index("hardship")]


def _propensity_inputs(pop: dict[str, np.ndarray], flags: np.ndarray, pd_logit: np.ndarray) -> np.ndarray:
    age = pop["age"]
    cols = {
        "age": (age - 47.0) / 16.0,
        "income": (np.log(pop["annual_income"] + 1_000.0) - 10.1) / 0.8,
        "tenure": (np.log1p(pop["tenure_months"]) - 3.6) / 1.0,
        "risk_tolerance": pop["risk_tolerance"] - 3.0,
        "experience": pop["experience"] - 1.0,
        "young": age < 26,
        "senior": age >= 60,
        "mortgaged": pop["home"] == 1,
        "renter": pop["home"] == 2,
        "risk": (pd_logit - PD_LOGIT_REFERENCE[0]) / PD_LOGIT_REFERENCE[1],
        **{f"note_{t}": flags[:, i] for i, t in enumerate(TOPICS[:-1])},
    }
    return np.column_stack([np.asarray(cols[k], dtype=np.float32) for k in PROPENSITY_INPUTS])


def generate(n: int, date: dt.date, seed: int, product_ids: list[str], labels: bool = False,
             drift: float = 0.0, id_offset: int = 0) -> tuple[pa.Table, pa.Table]:
    """Draw ``n`` customers for snapshot ``date``; return (snapshot, truth).

    The snapshot has the SPEC §2 default columns (plus ``default_12m`` and
    ``products_acquired_90d`` when ``labels``). Ids are ``C`` + 9 digits from
    ``id_offset``, so chunks with distinct offsets never collide. ``drift`` (0 = the
    reference population, 1 = strongly shifted) makes customers younger, poorer and more
    indebted, with more arrears and inquiries.

    Truth table layout, one row per customer in snapshot order:
    ``customer_id`` (string), ``true_pd`` (float64: the 12-month default probability the
    label was drawn from) and one float64 column ``p_<product_id>`` per product in
    ``product_ids`` order: the 90-day take-up probability, 0 for products already held.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    pop = _population(rng, n, drift)
    pii = _pii(rng, n, pop["region"])
    notes, flags = _notes(rng, pop, pii["email"], pii["phone"])
    pd_logit = _pd_logit(pop, flags)
    true_pd = _sigmoid(pd_logit)

    weights, intercepts, held_shift = _product_matrix(product_ids)
    inputs = _propensity_inputs(pop, flags, pd_logit)
    base = inputs @ weights + intercepts
    # Holdings predate the notes, so note topics do not drive them.
    k = len(FEATURE_INPUTS)
    held_logit = inputs[:, :k] @ weights[:k] + intercepts + held_shift
    held = rng.random(held_logit.shape, dtype=np.float32) < _sigmoid(held_logit)
    propensity = np.where(held, np.float32(0.0), _sigmoid(base))

    numbers = pc.cast(pa.array(np.arange(id_offset, id_offset + n, dtype=np.int64)), pa.string())
    ids = _join("C", pc.utf8_lpad(numbers, 9, "0"))
    columns: dict[str, pa.Array] = {
        "customer_id": ids,
        "snapshot_date": pa.array(np.full(n, np.datetime64(date, "D")), pa.date32()),
        **pii,
        "age": pa.array(pop["age"]),
        "annual_income": pa.array(pop["annual_income"]),
        "employment_status": _pick(EMPLOYMENT, pop["emp"]),
        "employment_years": pa.array(pop["employment_years"], mask=pop["years_null"]),
        "home_ownership": _pick(HOME, pop["home"]),
        "region": _pick(REGIONS, pop["region"]),
        **{k: pa.array(pop[k]) for k in (
            "tenure_months", "n_open_accounts", "total_credit_limit", "revolving_balance", "credit_utilization",
            "debt_to_income", "n_late_payments_12m")},
        "months_since_last_delinquency": pa.array(pop["since"], mask=pop["since_null"]),
        **{k: pa.array(pop[k]) for k in (
            "n_inquiries_6m", "avg_monthly_balance", "monthly_txn_count", "risk_tolerance")},
        "investment_experience": _pick(EXPERIENCE, pop["experience"]),
        "is_vulnerable": pa.array(pop["is_vulnerable"]),
        "products_held": _list_column(held, product_ids),
        "interaction_notes": notes,
    }
    if labels:
        columns["default_12m"] = pa.array(rng.random(n) < true_pd)
        acquired = rng.random(propensity.shape, dtype=np.float32) < propensity
        columns["products_acquired_90d"] = _list_column(acquired, product_ids)
    truth = {"customer_id": ids, "true_pd": pa.array(true_pd)}
    truth.update({f"p_{p}": pa.array(propensity[:, j].astype(np.float64)) for j, p in enumerate(product_ids)})
    return pa.table(columns), pa.table(truth)


# --------------------------------------------------------------------------- corruption
CORRUPTION_KINDS = (
    "null_id", "duplicate_id", "wrong_date", "null_feature", "out_of_range", "bad_category", "bad_list_item",
)


def corruption_kinds(table: pa.Table, schema: SchemaSpec) -> list[str]:
    """The corruption kinds this schema and table allow (e.g. no wrong_date without a date column)."""
    cols = set(table.column_names)
    feats = [f for f in schema.features if f.name in cols]
    possible = {
        "null_id": schema.id in cols,
        "duplicate_id": schema.id in cols and table.num_rows >= 2,
        "wrong_date": bool(schema.date) and schema.date in cols,
        "null_feature": any(not f.nullable for f in feats),
        "out_of_range": any(f.kind == "numeric" and (f.min is not None or f.max is not None) for f in feats),
        "bad_category": any(f.kind == "categorical" and f.values for f in feats),
        "bad_list_item": any(f.kind == "list" and f.values for f in feats),
    }
    return [k for k in CORRUPTION_KINDS if possible[k]]


def _invalid(values: list[str]) -> str:
    bad = "INVALID"
    while bad in values:
        bad += "_"
    return bad


def _set_rows(table: pa.Table, name: str, rows: np.ndarray, value: pa.Scalar | pa.Array) -> pa.Table:
    """Replace column ``name`` at ``rows`` with ``value`` (a scalar or a full-length array)."""
    col = table.column(name).combine_chunks()
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rows] = True
    new = pc.if_else(pa.array(mask), value, col)
    return table.set_column(table.column_names.index(name), name, new)


def _out_of_range(f: FeatureSpec, col_type: pa.DataType, above: bool) -> pa.Scalar:
    """A value just outside the feature's bounds, on whichever side is bounded."""
    if f.max is not None and (above or f.min is None):
        value = float(np.ceil(f.max + max(1.0, abs(f.max) * 0.5)))
    else:
        value = float(np.floor(f.min - max(1.0, abs(f.min) * 0.5)))
    return pa.scalar(value).cast(col_type)


def corrupt(table: pa.Table, schema: SchemaSpec, fraction: float, seed: int) -> pa.Table:
    """Damage ~``fraction`` of rows, each in one way, spread evenly over ``corruption_kinds``.

    Driven only by the schema config so it applies to any snapshot: null id, an id copied
    from an undamaged row, snapshot date moved by 1-30 days, null in a non-nullable
    feature, a numeric value outside its min/max, a category or list item outside
    ``values``. Row count and column types are unchanged.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    kinds = corruption_kinds(table, schema)
    n = table.num_rows
    k = int(round(fraction * n))
    if k == 0 or not kinds:
        return table
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(n)[:k]
    untouched = np.setdiff1d(np.arange(n), chosen)
    feats = [f for f in schema.features if f.name in table.column_names]
    for i, kind in enumerate(kinds):
        rows = np.sort(chosen[i::len(kinds)])
        if not len(rows):
            continue
        if kind == "null_id":
            table = _set_rows(table, schema.id, rows, pa.scalar(None, table.schema.field(schema.id).type))
        elif kind == "duplicate_id":
            pool = untouched if len(untouched) else np.arange(n)
            src = pool[rng.integers(0, len(pool), len(rows))]
            lookup = np.arange(n)
            lookup[rows] = np.where(src == rows, (rows + 1) % n, src)
            table = _set_rows(table, schema.id, rows, table.column(schema.id).combine_chunks().take(pa.array(lookup)))
        elif kind == "wrong_date":
            col = table.column(schema.date).combine_chunks()
            days = col.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")
            shift = rng.integers(1, 31, n) * rng.choice([-1, 1], n)
            moved = pa.array(days + shift.astype("timedelta64[D]"), pa.date32()).cast(col.type)
            table = _set_rows(table, schema.date, rows, moved)
        else:
            if kind == "null_feature":
                cands = [f for f in feats if not f.nullable]
            elif kind == "out_of_range":
                cands = [f for f in feats if f.kind == "numeric" and (f.min is not None or f.max is not None)]
            elif kind == "bad_category":
                cands = [f for f in feats if f.kind == "categorical" and f.values]
            else:
                cands = [f for f in feats if f.kind == "list" and f.values]
            which = rng.integers(0, len(cands), len(rows))
            above = rng.random(len(rows)) < 0.5
            for j, f in enumerate(cands):
                col_type = table.schema.field(f.name).type
                if kind == "out_of_range":
                    for side in (False, True):
                        sub = rows[(which == j) & (above == side)]
                        if len(sub):
                            table = _set_rows(table, f.name, sub, _out_of_range(f, col_type, side))
                    continue
                sub = rows[which == j]
                if not len(sub):
                    continue
                if kind == "null_feature":
                    value = pa.scalar(None, col_type)
                elif kind == "bad_category":
                    value = pa.scalar(_invalid(f.values or [])).cast(col_type)
                else:
                    value = pa.scalar([_invalid(f.values or [])], col_type)
                table = _set_rows(table, f.name, sub, value)
    return table
