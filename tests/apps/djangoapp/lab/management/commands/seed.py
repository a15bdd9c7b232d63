"""`manage.py seed`: a few rows the views read; idempotent."""
from django.core.management.base import BaseCommand
from django.db import transaction

from lab.models import Analysis, Sample, Variant


class Command(BaseCommand):
    help = "Insert a few samples, variants and analyses (only into empty tables)."

    def handle(self, *args, **options):
        if Sample.objects.exists():
            self.stdout.write("seed: already seeded")
            return
        with transaction.atomic():
            for i in range(1, 4):
                sample = Sample.objects.create(name=f"sample-{i}")
                for j in range(1, 3):
                    Variant.objects.create(sample=sample, key=f"chr{i}:{1000 * j}A>G", gene=f"GENE{i}{j}")
                Analysis.objects.create(sample=sample, status="done", score=0.5 * i)
        self.stdout.write("seed: inserted 3 samples, 6 variants, 3 analyses")
