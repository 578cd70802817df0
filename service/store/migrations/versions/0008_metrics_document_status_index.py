"""An index on documents.status: /metrics counts documents by status at every scrape, and the
recovery sweep looks for documents still processing

Revision ID: 0006_metrics
Revises: 0005_tenants
"""

from alembic import op

revision = '0006_metrics'
down_revision = '0005_tenants'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_documents_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_documents_status'))
