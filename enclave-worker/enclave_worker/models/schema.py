"""What a sealed model predicts from: its features in order, which are categories and which.

A model trained in the enclave records its training table's columns
(protocols.training: numeric columns as float32, text columns as categories
agreed across the data sets). A query must give exactly those columns, in
any order — numbers for numeric features, text for categorical ones — and
:meth:`ModelSchema.query_table` checks that before any prediction and maps
each text value to the recorded categories, one the model never saw becoming
a missing value (protocols.training.prediction_table, the rule a plaintext
check follows too).

Errors name the columns and the kind of problem, never a value: they leave
the enclave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols import canonical, training
from protocols.documents import JobTerms
from protocols.errors import DatasetError, FormatError


@dataclass(frozen=True)
class Feature:
    """One feature of the model: its column name and, for a categorical one, its categories."""

    name: str
    categories: tuple[str, ...] | None = None  # None: numeric

    @property
    def categorical(self) -> bool:
        return self.categories is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "categories": None if self.categories is None else list(self.categories),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Feature:
        if not isinstance(doc, dict):
            raise FormatError("a sealed model's feature must be an object")
        categories = doc.get("categories")
        if categories is not None and (
            not isinstance(categories, list) or not all(isinstance(c, str) for c in categories)
        ):
            raise FormatError("a sealed model's feature categories must be a list of text")
        name = canonical.field(doc, "name", str, "sealed model feature")
        return cls(name, None if categories is None else tuple(categories))


@dataclass(frozen=True)
class ModelSchema:
    """The features a sealed model predicts from, and how its raw output is read."""

    features: tuple[Feature, ...]
    objective: str
    num_class: int | None = None  # multi:* objectives only

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categories(self) -> dict[str, list[str]]:
        return {f.name: list(f.categories) for f in self.features if f.categories is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [f.to_dict() for f in self.features],
            "objective": self.objective,
            "num_class": self.num_class,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> ModelSchema:
        what = "sealed model schema"
        if not isinstance(doc, dict):
            raise FormatError(f"{what} must be an object")
        num_class = doc.get("num_class")
        if num_class is not None and (
            isinstance(num_class, bool) or not isinstance(num_class, int)
        ):
            raise FormatError(f"{what} num_class must be an integer or null")
        return cls(
            tuple(Feature.from_dict(f) for f in canonical.field(doc, "features", list, what)),
            canonical.field(doc, "objective", str, what),
            num_class,
        )

    @classmethod
    def of_training(cls, features: Any, names: list[str], terms: JobTerms) -> ModelSchema:
        """The schema of a model trained on ``features`` (jobs.tables.TrainingData.features:
        float32 columns and dictionary columns over the agreed categories, in feature order)."""
        import pyarrow as pa

        recorded = []
        for name in names:
            column = features.column(name)
            categories: tuple[str, ...] | None = None
            if pa.types.is_dictionary(column.type):
                # protocols.training.categorize gives every chunk the one agreed dictionary.
                categories = (
                    tuple(column.chunk(0).dictionary.to_pylist()) if column.num_chunks else ()
                )
            recorded.append(Feature(name, categories))
        num_class = None
        if terms.objective.startswith("multi:"):
            value = terms.params.get("num_class")
            num_class = value if isinstance(value, int) and not isinstance(value, bool) else None
        return cls(tuple(recorded), terms.objective, num_class)

    def query_table(self, table: Any, model_id: str) -> Any:
        """``table`` as the model's input: its columns checked, in feature order, categories mapped.

        Raises DatasetError naming every missing, extra and mistyped column (and
        columns with infinite values), never a value.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        where = f"the query of model {model_id!r}"
        given = list(table.column_names)
        repeated = sorted({n for n in given if given.count(n) > 1})
        if repeated:
            raise DatasetError(f"{where} names the column(s) {_names(repeated)} more than once")
        wanted = {f.name: f for f in self.features}
        problems = []
        missing = [n for n in self.names if n not in given]
        extra = [n for n in given if n not in wanted]
        if missing:
            problems.append(f"lacks the column(s) {_names(missing)}")
        if extra:
            problems.append(f"has column(s) the model does not take: {_names(extra)}")
        as_text, as_numbers = [], []
        for name in given:
            feature = wanted.get(name)
            if feature is None:
                continue
            kind = table.schema.field(name).type
            if pa.types.is_null(kind):
                continue  # every value missing: fits either kind
            if feature.categorical and not training.is_categorical(kind):
                as_text.append(name)
            elif not feature.categorical and not training.is_numeric(kind):
                as_numbers.append(name)
        if as_numbers:
            problems.append(f"holds non-numbers in the numeric column(s) {_names(as_numbers)}")
        if as_text:
            problems.append(
                f"holds non-text in the categorical column(s) {_names(as_text)} (send "
                "categories as text)"
            )
        if problems:
            raise DatasetError(
                f"{where} {'; '.join(problems)}: send exactly the model's columns "
                f"({len(self.features)}: numbers for numeric features, text for categorical ones)"
            )
        for name in self.names:
            kind = table.schema.field(name).type
            if pa.types.is_floating(kind):
                infinite = int(pc.sum(pc.is_inf(table.column(name))).as_py() or 0)
                if infinite:
                    raise DatasetError(
                        f"{where} column {name!r} has {infinite} infinite values; send finite "
                        "numbers or missing values"
                    )
        return training.prediction_table(
            table.select(self.names).cast(_input_schema(table.select(self.names).schema)),
            self.categories,
            self.names,
        )


def _input_schema(schema: Any) -> Any:
    """All-missing (null-typed) columns as float32: protocols.training then treats them as
    numbers, or as categories with no value the model knows."""
    import pyarrow as pa

    return pa.schema(
        [pa.field(f.name, pa.float32()) if pa.types.is_null(f.type) else f for f in schema]
    )


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)
