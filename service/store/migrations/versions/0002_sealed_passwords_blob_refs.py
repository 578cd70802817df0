"""PDF passwords stored sealed; stored files a document owns; documents uploaded by URL

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        # A clear password is only ever held until ingestion opens the file: drop, not convert.
        batch_op.drop_column('password')
        batch_op.add_column(sa.Column('password_sealed', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('source_url', sa.String(length=2000), nullable=True))
    op.create_table('document_blobs',
    sa.Column('document_id', sa.String(length=40), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], ),
    sa.PrimaryKeyConstraint('document_id', 'key')
    )
    with op.batch_alter_table('document_blobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_document_blobs_key'), ['key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('document_blobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_document_blobs_key'))
    op.drop_table('document_blobs')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_column('password_sealed')
        batch_op.drop_column('source_url')
        batch_op.add_column(sa.Column('password', sa.String(length=500), nullable=True))
