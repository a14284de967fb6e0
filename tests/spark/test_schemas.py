"""Each row schema is declared once in Arrow (clipsift.udfs.schemas); the Spark DDL derived from it is the type
Spark itself gives the Arrow schema (pyspark's own Arrow-to-Spark conversion)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from clipsift.udfs import schemas


@pytest.mark.parametrize("name", ["POOL", "CHECKED", "PAIRS"])
def test_ddl_is_sparks_own_reading_of_the_arrow_schema(spark: SparkSession, name: str) -> None:
    arrow = getattr(schemas, f"{name}_ARROW")
    ddl = getattr(schemas, f"{name}_DDL")
    assert spark.createDataFrame([], ddl).schema.simpleString() == from_arrow_schema(arrow).simpleString()


def test_an_arrow_type_without_a_spark_type_is_an_error() -> None:
    with pytest.raises(TypeError, match="no Spark type"):
        schemas.spark_ddl(pa.schema([("t", pa.time32("s"))]))
