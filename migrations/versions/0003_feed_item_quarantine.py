"""feed item quarantine

A feed item that a stage fails on is marked `failed` with its reason instead of blocking every later item;
`error` holds that reason until `notifier feeds retry ID` puts the item back in the queue. A broadcast whose
planning fails (a notice that cannot be rendered, say) is quarantined the same way, with its own `error`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 03:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('feed_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.drop_column('error')
    with op.batch_alter_table('feed_items', schema=None) as batch_op:
        batch_op.drop_column('error')
