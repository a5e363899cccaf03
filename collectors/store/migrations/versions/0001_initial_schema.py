"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 21:43:21.524647
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('device',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('vendor', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('host', sa.String(length=128), nullable=True),
    sa.Column('driver_version', sa.String(length=64), nullable=True),
    sa.Column('cuda_version', sa.String(length=32), nullable=True),
    sa.Column('sm_count', sa.Integer(), nullable=True),
    sa.Column('memory_bytes', sa.BigInteger(), nullable=True),
    sa.Column('max_sm_clock_mhz', sa.Float(), nullable=True),
    sa.Column('max_mem_clock_mhz', sa.Float(), nullable=True),
    sa.Column('power_limit_w', sa.Float(), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_fingerprint'), ['fingerprint'], unique=True)
        batch_op.create_index(batch_op.f('ix_device_model'), ['model'], unique=False)

    op.create_table('device_peak',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('unit', sa.String(length=16), nullable=False),
    sa.Column('std', sa.Float(), nullable=True),
    sa.Column('method', sa.Text(), nullable=False),
    sa.Column('measured_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'metric', name='uq_peak_device_metric')
    )
    op.create_table('sweep',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('host', sa.String(length=128), nullable=True),
    sa.Column('n_planned', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('measurement',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=32), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('config_key', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('op_kind', sa.String(length=32), nullable=False),
    sa.Column('m', sa.BigInteger(), nullable=True),
    sa.Column('n', sa.BigInteger(), nullable=True),
    sa.Column('k', sa.BigInteger(), nullable=True),
    sa.Column('batch', sa.Integer(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('layout', sa.String(length=8), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=True),
    sa.Column('compute_type', sa.String(length=32), nullable=True),
    sa.Column('tensor_core', sa.Boolean(), nullable=True),
    sa.Column('threads', sa.Integer(), nullable=True),
    sa.Column('l2_flushed', sa.Boolean(), nullable=True),
    sa.Column('latency_ms_median', sa.Float(), nullable=True),
    sa.Column('latency_ms_p10', sa.Float(), nullable=True),
    sa.Column('latency_ms_p90', sa.Float(), nullable=True),
    sa.Column('latency_ms_mean', sa.Float(), nullable=True),
    sa.Column('latency_ms_std', sa.Float(), nullable=True),
    sa.Column('repetitions', sa.Integer(), nullable=True),
    sa.Column('tflops', sa.Float(), nullable=True),
    sa.Column('power_w', sa.Float(), nullable=True),
    sa.Column('energy_j', sa.Float(), nullable=True),
    sa.Column('power_source', sa.String(length=32), nullable=False),
    sa.Column('power_window_s', sa.Float(), nullable=True),
    sa.Column('sm_clock_mhz', sa.Float(), nullable=True),
    sa.Column('mem_clock_mhz', sa.Float(), nullable=True),
    sa.Column('temperature_c', sa.Float(), nullable=True),
    sa.Column('throttle_reasons', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweep.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sweep_id', 'config_key', name='uq_measurement_sweep_config'),
    sa.UniqueConstraint('uid')
    )
    with op.batch_alter_table('measurement', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_measurement_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_measurement_dtype'), ['dtype'], unique=False)
        batch_op.create_index(batch_op.f('ix_measurement_op_kind'), ['op_kind'], unique=False)
        batch_op.create_index('ix_measurement_shape',
                              ['device_id', 'op_kind', 'm', 'n', 'k', 'dtype'], unique=False)
        batch_op.create_index(batch_op.f('ix_measurement_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_measurement_sweep_id'), ['sweep_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('measurement', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_measurement_sweep_id'))
        batch_op.drop_index(batch_op.f('ix_measurement_status'))
        batch_op.drop_index('ix_measurement_shape')
        batch_op.drop_index(batch_op.f('ix_measurement_op_kind'))
        batch_op.drop_index(batch_op.f('ix_measurement_dtype'))
        batch_op.drop_index(batch_op.f('ix_measurement_device_id'))

    op.drop_table('measurement')
    op.drop_table('sweep')
    op.drop_table('device_peak')
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_model'))
        batch_op.drop_index(batch_op.f('ix_device_fingerprint'))

    op.drop_table('device')
