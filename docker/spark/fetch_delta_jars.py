"""Build step of the Spark image: download the Delta jars that match the installed
delta-spark and pyspark into pyspark's jars/ folder (no network at run time)."""

import glob
import os
import shutil

import pyspark
from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

builder = SparkSession.builder.master("local[1]").config("spark.jars.ivy", "/tmp/ivy")
spark = configure_spark_with_delta_pip(builder).getOrCreate()  # resolves the jars through Ivy
spark.stop()
target = os.path.join(os.path.dirname(pyspark.__file__), "jars")
jars = glob.glob("/tmp/ivy/jars/*.jar")
assert any("delta-spark" in j for j in jars) and any("delta-storage" in j for j in jars), jars
for jar in jars:
    shutil.copy(jar, target)
shutil.rmtree("/tmp/ivy")
print("delta jars:", sorted(os.path.basename(j) for j in jars))
