"""dataset withdrawal: withdrawn_at and the owner's statement, deliveries to the workers

Revision ID: 0005_dataset_withdrawal
Revises: 0003_audit_head_signature
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_dataset_withdrawal"
down_revision = "0003_audit_head_signature"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("withdrawn_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("withdrawal", sa.LargeBinary(), nullable=True))
    op.create_table(
        "withdrawal_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(length=128), nullable=False),
        sa.Column("worker", sa.String(length=256), nullable=False),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.dataset_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id", "worker"),
    )
    with op.batch_alter_table("withdrawal_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_withdrawal_deliveries_dataset_id"), ["dataset_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("withdrawal_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_withdrawal_deliveries_dataset_id"))
    op.drop_table("withdrawal_deliveries")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("withdrawal")
        batch_op.drop_column("withdrawn_at")
