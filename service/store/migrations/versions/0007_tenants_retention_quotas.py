"""Tenants own their data and share fairly: retention and purge times, a job's own list of
documents (kept when one is deleted), quotas and their ledger, key and webhook secret rotation

Revision ID: 0005_tenants
Revises: 0005_grounded
"""

import sqlalchemy as sa
from alembic import op

revision = '0005_tenants'
down_revision = '0005_grounded'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_webhook_secret', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('previous_webhook_secret_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('max_concurrent_jobs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_pages_per_day', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('max_tokens_per_day', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('max_usd_per_month', sa.Float(), nullable=True))
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purge_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_documents_purge_at'), ['purge_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_documents_created_at'), ['created_at'], unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('document_ids', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('pages', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('charged_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('purge_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_purge_at'), ['purge_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_finished_at'), ['finished_at'], unique=False)
        batch_op.create_index('ix_jobs_charged_at_tenant_id', ['charged_at', 'tenant_id'], unique=False)
    # Jobs keep their document ids themselves from now on (in job order).
    bind = op.get_bind()
    ids: dict[str, list[str]] = {}
    for job_id, document_id in bind.execute(sa.text(
            "SELECT job_id, document_id FROM job_documents ORDER BY job_id, position")):
        ids.setdefault(job_id, []).append(document_id)
    jobs = sa.table('jobs', sa.column('id', sa.String()), sa.column('document_ids', sa.JSON()))
    for job_id, document_ids in ids.items():
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(document_ids=document_ids))
    usage = op.create_table('tenant_usage',
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('jobs', sa.Integer(), nullable=False),
    sa.Column('pages', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'day')
    )
    # Jobs that ended before quotas existed go into the ledger on the day they ended, so the
    # first purge does not charge them all to today.
    ended = ('succeeded', 'failed', 'canceled')
    past = sa.table('jobs', sa.column('tenant_id', sa.String()), sa.column('status', sa.String()),
                    sa.column('finished_at', sa.DateTime(timezone=True)),
                    sa.column('charged_at', sa.DateTime(timezone=True)),
                    sa.column('prompt_tokens', sa.BigInteger()),
                    sa.column('completion_tokens', sa.BigInteger()),
                    sa.column('cost_usd', sa.Float()))
    days: dict[tuple[str, object], list[float]] = {}
    for tenant_id, finished_at, prompt, completion, cost in bind.execute(
            sa.select(past.c.tenant_id, past.c.finished_at, past.c.prompt_tokens,
                      past.c.completion_tokens, past.c.cost_usd)
            .where(past.c.status.in_(ended), past.c.finished_at.is_not(None))):
        row = days.setdefault((tenant_id, finished_at.date()), [0, 0, 0, 0.0])
        row[0] += 1
        row[1] += prompt or 0
        row[2] += completion or 0
        row[3] += cost or 0.0
    if days:
        bind.execute(usage.insert(), [
            {'tenant_id': tenant_id, 'day': day, 'jobs': int(n), 'pages': 0,
             'prompt_tokens': int(prompt), 'completion_tokens': int(completion), 'cost_usd': cost}
            for (tenant_id, day), (n, prompt, completion, cost) in days.items()])
    bind.execute(past.update().where(past.c.status.in_(ended), past.c.finished_at.is_not(None))
                 .values(charged_at=past.c.finished_at))


def downgrade() -> None:
    op.drop_table('tenant_usage')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_charged_at_tenant_id')
        batch_op.drop_index(batch_op.f('ix_jobs_finished_at'))
        batch_op.drop_index(batch_op.f('ix_jobs_purge_at'))
        for column in ('purge_at', 'charged_at', 'pages', 'document_ids'):
            batch_op.drop_column(column)
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_documents_created_at'))
        batch_op.drop_index(batch_op.f('ix_documents_purge_at'))
        batch_op.drop_column('purge_at')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        for column in ('max_usd_per_month', 'max_tokens_per_day', 'max_pages_per_day',
                       'max_concurrent_jobs', 'previous_webhook_secret_until',
                       'previous_webhook_secret'):
            batch_op.drop_column(column)
