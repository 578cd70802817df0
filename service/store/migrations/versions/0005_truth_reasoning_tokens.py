"""Reasoning tokens per call and per job (reasoning models report them inside completion tokens)

Revision ID: 0005_truth
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005_truth'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reasoning_tokens', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reasoning_tokens', sa.BigInteger(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('reasoning_tokens')
    with op.batch_alter_table('model_calls', schema=None) as batch_op:
        batch_op.drop_column('reasoning_tokens')
