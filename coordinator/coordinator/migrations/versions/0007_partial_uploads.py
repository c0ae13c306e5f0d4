"""partial uploads: resumable data set uploads the coordinator holds until complete

Revision ID: 0007_partial_uploads
Revises: 0005_dataset_withdrawal
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_partial_uploads"
down_revision = "0005_dataset_withdrawal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partial_uploads",
        sa.Column("upload_id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=128), nullable=False),
        sa.Column("owner_key", sa.String(length=64), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("temp_name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("upload_id"),
        sa.UniqueConstraint("dataset_id"),
    )
    with op.batch_alter_table("partial_uploads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_partial_uploads_owner_key"), ["owner_key"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_partial_uploads_updated_at"), ["updated_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("partial_uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_partial_uploads_updated_at"))
        batch_op.drop_index(batch_op.f("ix_partial_uploads_owner_key"))
    op.drop_table("partial_uploads")
