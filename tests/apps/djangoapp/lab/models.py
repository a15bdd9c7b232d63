"""A small laboratory schema: samples, their variants (unique key) and analyses."""
from django.db import models


class Sample(models.Model):
    name = models.CharField(max_length=100)
    collected_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class Variant(models.Model):
    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="variants")
    key = models.CharField(max_length=100, unique=True)
    gene = models.CharField(max_length=50)

    class Meta:
        ordering = ["id"]


class Analysis(models.Model):
    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="analyses")
    status = models.CharField(max_length=20, default="pending")
    score = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
