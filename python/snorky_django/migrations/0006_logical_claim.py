"""The batch record of logical delivery (``DELIVERY = "logical"``)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("snorky_django", "0005_outbox_notify_from_the_writer")]

    operations = [
        migrations.CreateModel(
            name="LogicalClaim",
            fields=[
                ("slot", models.CharField(max_length=63, primary_key=True, serialize=False)),
                ("first", models.CharField(max_length=64)),
                ("last", models.CharField(max_length=64)),
                ("key", models.CharField(max_length=200)),
            ],
            options={"verbose_name": "logical delivery claim"},
        ),
    ]
