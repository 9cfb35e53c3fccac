"""inbound messages by MessageSid

Every inbound SMS Twilio delivers is kept by its MessageSid (unique), with its kind, the sender masked, when it was
first seen and the answer we gave: a re-delivered or replayed request is answered again but changes nothing, and
one first seen longer ago than the replay window is refused (issue 16, finding 2).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 03:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inbound_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_sid', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('sender', sa.String(length=32), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_sid')
    )
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbound_messages_first_seen_at'), ['first_seen_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_messages_first_seen_at'))
    op.drop_table('inbound_messages')
