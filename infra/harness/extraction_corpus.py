"""An extraction corpus: 48 short documents and the three schemas they are read with.

Each schema stands for a kind of nightly extraction job: a flat record with enums and numbers
(product reviews), nested arrays of objects (invoices), booleans and integers (staff notes).
Strings and arrays carry length bounds so that a small model cannot wander forever inside one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _record(properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON-schema object that holds exactly ``properties``, every one of them required."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


REVIEW_SCHEMA = _record(
    {
        "product": {"type": "string", "maxLength": 40},
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "rating": {"type": "number", "minimum": 1, "maximum": 5},
        "price_usd": {"type": "number"},
    }
)

INVOICE_SCHEMA = _record(
    {
        "invoice_number": {"type": "string", "maxLength": 20},
        "vendor": _record(
            {
                "name": {"type": "string", "maxLength": 40},
                "country": {"type": "string", "maxLength": 30},
            }
        ),
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": _record(
                {
                    "description": {"type": "string", "maxLength": 40},
                    "quantity": {"type": "integer"},
                    "unit_price": {"type": "number"},
                }
            ),
        },
        "total": {"type": "number"},
    }
)

STAFF_SCHEMA = _record(
    {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 16, "maximum": 99},
        "is_manager": {"type": "boolean"},
        "remote": {"type": "boolean"},
        "years_at_company": {"type": "integer", "minimum": 0},
    }
)

_PRODUCTS = [
    ("AeroPress coffee maker", "love it, makes great coffee every morning", 5, 39.95),
    ("Kindle Paperwhite", "screen is fine but the battery died after a month", 2, 139.99),
    ("Logitech MX Master mouse", "it works, nothing special", 3, 99.0),
    ("Sony WH-1000XM5 headphones", "the noise cancelling is amazing", 5, 349.0),
    ("IKEA Billy bookcase", "arrived broken and support never answered", 1, 69.0),
    ("Instant Pot Duo", "does what it says, a bit loud", 4, 89.5),
    ("Nalgene water bottle", "just a bottle", 3, 14.99),
    ("Anker power bank", "charged my phone three times, very happy", 5, 45.0),
    ("Philips Hue bulb", "app keeps disconnecting, annoying", 2, 24.99),
    ("Moleskine notebook", "paper is nice, the price is steep", 3, 22.0),
    ("Garmin Forerunner watch", "best running watch I have owned", 5, 299.99),
    ("Cheap USB cable", "stopped working after two days", 1, 5.49),
    ("Lodge cast iron skillet", "heavy but cooks perfectly", 4, 29.9),
    ("Roomba i3", "misses corners, otherwise okay", 3, 274.0),
    ("Patagonia fleece jacket", "warm and well made", 5, 149.0),
    ("Generic phone case", "cracked the first time I dropped it", 1, 9.99),
]

_VENDORS = [
    ("Acme Tools GmbH", "Germany"),
    ("Blue Ocean Supplies", "Canada"),
    ("Nordic Paper AB", "Sweden"),
    ("Sunrise Electronics", "Japan"),
    ("Maple Office Ltd", "United Kingdom"),
    ("Rio Coffee Traders", "Brazil"),
    ("Atlas Hardware", "United States"),
    ("Lotus Textiles", "India"),
]

_ITEMS = [
    ("steel hammer", 12.5),
    ("box of screws", 4.2),
    ("printer paper ream", 6.0),
    ("USB keyboard", 25.0),
    ("coffee beans 1kg", 18.75),
    ("cotton towels", 7.3),
    ("LED desk lamp", 31.0),
    ("notebook A5", 2.8),
]

_PEOPLE = [
    ("Maria Lopez", 34, True, False, 6),
    ("John Smith", 52, False, True, 20),
    ("Aiko Tanaka", 28, False, False, 2),
    ("Peter Novak", 45, True, True, 11),
    ("Fatima Khan", 39, True, False, 9),
    ("Lucas Martin", 23, False, True, 1),
    ("Olga Ivanova", 61, False, False, 30),
    ("Samuel Okafor", 31, True, True, 4),
    ("Chen Wei", 27, False, True, 3),
    ("Emma Brown", 48, True, False, 15),
    ("Tom Becker", 36, False, False, 8),
    ("Lina Haddad", 29, False, True, 5),
    ("Ravi Patel", 41, True, True, 12),
    ("Sofia Rossi", 26, False, False, 0),
    ("Noah Wilson", 57, True, False, 25),
    ("Hana Kim", 33, False, True, 7),
]


@dataclass(slots=True, frozen=True)
class Document:
    doc_id: str
    schema_name: str
    text: str


SCHEMAS: dict[str, dict[str, Any]] = {
    "review": REVIEW_SCHEMA,
    "invoice": INVOICE_SCHEMA,
    "staff": STAFF_SCHEMA,
}


def _reviews() -> list[Document]:
    return [
        Document(
            f"review-{i}",
            "review",
            f"Review of the {name} (bought for ${price}): {words}. I give it {stars} out of 5.",
        )
        for i, (name, words, stars, price) in enumerate(_PRODUCTS)
    ]


def _invoices() -> list[Document]:
    docs = []
    for i in range(16):
        vendor, country = _VENDORS[i % len(_VENDORS)]
        lines = [_ITEMS[(i + k) % len(_ITEMS)] for k in range(1 + i % 3)]
        quantities = [1 + (i * 7 + k * 3) % 9 for k in range(len(lines))]
        total = sum(q * p for q, (_, p) in zip(quantities, lines, strict=True))
        body = "; ".join(
            f"{q} x {d} at ${p:.2f} each" for q, (d, p) in zip(quantities, lines, strict=True)
        )
        docs.append(
            Document(
                f"invoice-{i}",
                "invoice",
                f"INVOICE INV-{2024_000 + i} from {vendor} ({country}). Items: {body}. "
                f"Total due: ${total:.2f}.",
            )
        )
    return docs


def _staff() -> list[Document]:
    docs = []
    for i, (name, age, manager, remote, years) in enumerate(_PEOPLE):
        role = "leads a team of five" if manager else "works as an individual contributor"
        place = "works from home" if remote else "comes to the office every day"
        docs.append(
            Document(
                f"staff-{i}",
                "staff",
                f"{name} is {age} years old, {role}, {place}, and joined the company "
                f"{years} years ago.",
            )
        )
    return docs


DOCUMENTS: list[Document] = [*_reviews(), *_invoices(), *_staff()]


def extraction_messages(doc: Document) -> list[dict[str, str]]:
    """The chat a job would send for one document."""
    return [
        {"role": "system", "content": "Extract the requested fields as JSON."},
        {"role": "user", "content": doc.text},
    ]
