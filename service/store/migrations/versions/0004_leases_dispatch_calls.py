"""Leases and dispatch times on every unit of work, chunk scheduling, calls recorded before they
are sent, idempotency keys

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

LEASED = ('documents', 'jobs', 'chunks')


def upgrade() -> None:
    for table in LEASED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('lease_owner', sa.String(length=80), nullable=True))
            batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))
            batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unknown_calls', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('waiting_reason', sa.String(length=60), nullable=True))
        batch_op.add_column(sa.Column('waiting_since', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant_id', sa.String(length=40), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('not_before', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('outage_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('created_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_chunks_status'), ['status'], unique=False)
    op.execute("UPDATE chunks SET tenant_id = (SELECT tenant_id FROM jobs WHERE jobs.id = chunks.job_id), "
               "created_at = updated_at")
    with op.batch_alter_table('model_calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=20), nullable=False, server_default='answered'))
        batch_op.add_column(sa.Column('purpose', sa.String(length=20), nullable=False, server_default='extract'))
        batch_op.create_index(batch_op.f('ix_model_calls_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_calls_chunk_id'), ['chunk_id'], unique=False)
    op.create_table('idempotency_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('endpoint', sa.String(length=40), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'endpoint', 'key')
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_table('idempotency_keys')
    with op.batch_alter_table('model_calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_calls_chunk_id'))
        batch_op.drop_index(batch_op.f('ix_model_calls_status'))
        batch_op.drop_column('purpose')
        batch_op.drop_column('status')
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chunks_status'))
        for column in ('created_at', 'outage_since', 'not_before', 'tenant_id'):
            batch_op.drop_column(column)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        for column in ('waiting_since', 'waiting_reason', 'unknown_calls'):
            batch_op.drop_column(column)
    for table in LEASED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in ('dispatched_at', 'lease_until', 'lease_owner'):
                batch_op.drop_column(column)
