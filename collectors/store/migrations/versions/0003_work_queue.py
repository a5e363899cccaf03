"""distributed work queue

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("device_type", sa.String(length=128), nullable=False),
        sa.Column("config_key", sa.String(length=255), nullable=False),
        sa.Column("op", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweep.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sweep_id", "device_type", "config_key", name="uq_work_item"),
    )
    op.create_index("ix_work_item_sweep_id", "work_item", ["sweep_id"])
    op.create_index("ix_work_item_claim", "work_item",
                    ["device_type", "status", "lease_expires_at"])
    op.create_table(
        "worker",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("measurement") as batch:
        batch.drop_constraint("uq_measurement_sweep_config", type_="unique")
        batch.create_unique_constraint("uq_measurement_sweep_device_config",
                                       ["sweep_id", "device_id", "config_key"])
        batch.add_column(sa.Column("work_item_id", sa.Integer(), nullable=True))
        batch.create_unique_constraint("uq_measurement_work_item", ["work_item_id"])
        batch.create_foreign_key("fk_measurement_work_item", "work_item", ["work_item_id"],
                                 ["id"])


def downgrade() -> None:
    with op.batch_alter_table("measurement") as batch:
        batch.drop_constraint("fk_measurement_work_item", type_="foreignkey")
        batch.drop_constraint("uq_measurement_work_item", type_="unique")
        batch.drop_column("work_item_id")
        batch.drop_constraint("uq_measurement_sweep_device_config", type_="unique")
        batch.create_unique_constraint("uq_measurement_sweep_config", ["sweep_id", "config_key"])
    op.drop_table("worker")
    op.drop_index("ix_work_item_claim", table_name="work_item")
    op.drop_index("ix_work_item_sweep_id", table_name="work_item")
    op.drop_table("work_item")
