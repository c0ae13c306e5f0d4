"""a data owner's signed rejection of a job

Revision ID: 0006_job_rejection
Revises: 0007_partial_uploads
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_job_rejection"
down_revision = "0007_partial_uploads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The rejection.v1 envelope (its reason inside, signed); the state column takes
    # the new value "rejected" as it is (String(16)).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rejection", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("rejection")
