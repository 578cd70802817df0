"""Grounded answers: a result's sources, and per model call whether its answer was used and how
many complete items it held

Revision ID: 0005_grounded
Revises: 0005_truth
"""

import sqlalchemy as sa
from alembic import op

revision = '0005_grounded'
down_revision = '0005_truth'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sources', sa.JSON(), nullable=True))
    with op.batch_alter_table('model_calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answer_used', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('answer_items', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_calls', schema=None) as batch_op:
        batch_op.drop_column('answer_items')
        batch_op.drop_column('answer_used')
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('sources')
